"""The Python parts of scripts/gpu_check.sh (one accelerator, at most 8 minutes), each a sub-command:

    agree OUT [--tiny]   bf16 autocast against fp32: the teacher's and the generator's flow-matching loss and
                         the tokenizer's reconstruction loss on one fixed batch (same weights, same noise)
    ddp OUT              under torchrun --nproc_per_node=1: the process group (nccl on CUDA, gloo on a CPU),
                         an all-reduce and one data-parallel flow-matching step
    table OUT            the Markdown report OUT/gpu_check.md from OUT/study/results.json and the two above

On a CPU (`--cpu-dry-run` of the shell script, tests/test_gpu_check.py) the same code runs with tiny
nets and CPU autocast, so the table is produced; its numbers are then CPU numbers and say so.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import distributed as D  # noqa: E402
from bench.core.dit import build_dit  # noqa: E402
from bench.core.flow import TimeSampler, flow_matching_loss  # noqa: E402
from bench.core.noise import BatchNoise  # noqa: E402
from bench.dmvae import TOKENIZER_PRESETS, build_tokenizer  # noqa: E402

LATENT = (4, 8, 8)
STAGES = ("teacher", "start", "dmvae", "generator")


def _device_name(dev: torch.device) -> str:
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def agree(out: Path, tiny: bool) -> dict:
    """Relative difference of each loss under bf16 autocast against fp32, on one fixed batch."""
    dev = D.device()
    torch.manual_seed(0)
    size, batch = ("T", 16) if tiny else ("B", 256)
    rows = []
    x = torch.randn((batch, *LATENT), generator=torch.Generator().manual_seed(1)).to(dev)
    y = torch.randint(10, (batch,), generator=torch.Generator().manual_seed(2)).to(dev)
    for name, patch in (("teacher (S_real) flow matching", 1), ("generator flow matching", 1)):
        net = build_dit(size, LATENT, 10, patch).to(dev)
        with torch.no_grad():  # adaLN-zero starts at v = 0: perturb so the loss depends on the net
            for p in net.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())).to(dev))
        losses = {}
        for prec in ("fp32", "bf16"):
            ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16")
            with torch.no_grad(), ctx:
                losses[prec] = float(flow_matching_loss(net, x, y, TimeSampler(), 0.1, BatchNoise(3, 0, 1)))
        rows.append({"loss": f"{name} ({size})", **losses})
    enc, dec = (m.to(dev) for m in build_tokenizer((1, 32, 32), LATENT, TOKENIZER_PRESETS["smoke" if tiny else "gpu"]))
    img = torch.rand((batch if tiny else 64, 1, 32, 32), generator=torch.Generator().manual_seed(4)).to(dev) * 2 - 1
    losses = {}
    for prec in ("fp32", "bf16"):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
            rec = dec(enc(img)).float()
            losses[prec] = float((rec - img).abs().mean() + (rec - img).pow(2).mean())
    rows.append({"loss": "tokenizer L1 + L2", **losses})
    for r in rows:
        r["rel_diff"] = abs(r["bf16"] - r["fp32"]) / max(abs(r["fp32"]), 1e-12)
    rec = {"device": _device_name(dev), "rows": rows, "tolerance": 0.02,
           "agree": all(r["rel_diff"] <= 0.02 for r in rows)}
    (out / "agree.json").write_text(json.dumps(rec, indent=1))
    return rec


def ddp(out: Path) -> dict:
    """The distributed path at world size 1: init (nccl on CUDA), all-reduce, one averaged training step."""
    D.init()
    dev = D.device()
    backend = torch.distributed.get_backend() if D.active() else "none (not under torchrun)"
    total = float(D.all_reduce_sum(torch.ones(3, device=dev)).sum())
    from bench.dmvae.loop import average_gradients
    net = build_dit("T", LATENT, 10, 2).to(dev)
    loss = flow_matching_loss(net, torch.randn((8, *LATENT), device=dev), torch.arange(8, device=dev) % 10,
                              TimeSampler(), 0.1, BatchNoise(0, D.rank(), D.world_size()))
    loss.backward()
    loss = loss.detach()
    average_gradients(net.parameters())
    rec = {"backend": backend, "world_size": D.world_size(), "all_reduce_sum_of_ones": total,
           "step_loss": loss.item(), "device": _device_name(dev)}
    if D.rank() == 0:
        (out / "ddp.json").write_text(json.dumps(rec, indent=1))
    if D.active():
        torch.distributed.destroy_process_group()
    return rec


def _fmt(v, scale=1.0, digits=1, unit=""):
    return "n/a" if v is None else f"{v / scale:.{digits}f}{unit}"


def table(out: Path) -> str:
    """OUT/gpu_check.md: per prior and stage img/s, FLOPs/image, MFU and peak memory; bf16 agreement; DDP."""
    lines = ["# GPU check", ""]
    res_path = out / "study" / "results.json"
    res = json.loads(res_path.read_text()) if res_path.is_file() else None
    if res is None:
        lines += ["No study results (OUT/study/results.json missing).", ""]
    else:
        meta = res["meta"]
        lines += [f"Study: `{meta.get('command')}`", "", f"Device: {meta.get('device')}", "",
                  "| prior | stage | img/s | GFLOP/image | achieved TFLOP/s | MFU | peak memory (GiB) | precision |",
                  "|---|---|---|---|---|---|---|---|"]
        for prior, entry in res["priors"].items():
            for seed, per in (entry.get("per_training_seed") or {}).items():
                thr, comp = per.get("throughput_img_per_s", {}), per.get("compute", {})
                for stage in STAGES:
                    c = comp.get(stage)
                    if c is None:
                        continue
                    mfu = f"{100 * c['mfu']:.1f}%" if c.get("mfu") is not None else c["mfu_reason"]
                    mem = c["peak_memory"]["bytes"]
                    lines.append(f"| {prior} | {stage} | {_fmt(thr.get(stage))} | {_fmt(c['flops_per_image'], 1e9, 3)} "
                                 f"| {_fmt(c['achieved_flop_per_s'], 1e12, 3)} | {mfu} | "
                                 f"{_fmt(mem, 2 ** 30, 2) if mem is not None else 'not measured (no CUDA)'} "
                                 f"| {c['settings']['precision']['applied']} |")
            if entry.get("status") != "ok":
                lines.append(f"| {prior} | status: {entry.get('status')} | {entry.get('failed_training_seeds', '')} "
                             f"| | | | | |")
        lines.append("")
    ag = out / "agree.json"
    if ag.is_file():
        a = json.loads(ag.read_text())
        lines += [f"## bf16 against fp32 on a fixed batch ({a['device']}; tolerance {a['tolerance']:.0%} relative)", "",
                  "| loss | fp32 | bf16 | relative difference |", "|---|---|---|---|"]
        lines += [f"| {r['loss']} | {r['fp32']:.6f} | {r['bf16']:.6f} | {r['rel_diff']:.2e} |" for r in a["rows"]]
        lines += ["", f"Agree within tolerance: {'yes' if a['agree'] else 'NO'}", ""]
    dd = out / "ddp.json"
    if dd.is_file():
        d = json.loads(dd.read_text())
        lines += ["## Distributed path at world size 1 (torchrun --nproc_per_node=1)", "",
                  f"backend {d['backend']}, world size {d['world_size']}, all-reduce of ones (3) = "
                  f"{d['all_reduce_sum_of_ones']:.0f}, one averaged step loss {d['step_loss']:.4f} ({d['device']})", ""]
    text = "\n".join(lines)
    (out / "gpu_check.md").write_text(text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("agree", "ddp", "table"))
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized nets (the dry run)")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.what == "agree":
        print(json.dumps(agree(a.out, a.tiny), indent=1))
    elif a.what == "ddp":
        print(json.dumps(ddp(a.out)))
    else:
        print(table(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
