"""One study as many cluster jobs: one per prior x training seed, submitted through submitit, merged after.

    run_all.py --priors gaussian,dino --set training_seeds=0,1 --launcher submitit \\
        --slurm-partition gpu --slurm-gpus 8 --slurm-time 720 --out runs/study

Each job is an ordinary study run, `run_all.py <same settings> --priors P --set training_seeds=S
--out <out>/jobs/P-seedS`, so it resumes from its own stage store when it is resubmitted (submitit
requeues a preempted or timed-out job through `StudyJob.checkpoint`; finished stages are loaded and
an unfinished training stage continues from its last checkpoint). With several GPUs per job the
job's SLURM tasks become torchrun-style ranks (RANK, WORLD_SIZE, MASTER_ADDR...; bench/distributed.py
then joins them). When every job has ended, the finished ones are merged into <out> (reports/merge.py:
the training seeds of a prior pooled into one row) and the report is written there; a failed job
loses only its own row. submitit is an optional extra: pip install 'dmvae-bench[cluster]'.

`--slurm-cluster local` runs the same jobs as local processes (submitit's LocalExecutor): how the
launcher is tested on a CPU machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.errors import UserError

CLUSTERS = ("auto", "slurm", "local")


@dataclass(frozen=True)
class JobSettings:
    """Resources of every job (flags --slurm-*); recorded in <out>/jobs/launch.json."""

    cluster: str = "auto"        # auto: SLURM when sbatch is found, else local processes
    partition: str | None = None
    gpus: int = 0                # per job (one node); the job's tasks = max(1, gpus) ranks
    time_min: int = 60 * 24
    mem_gb: int | None = None
    cpus_per_task: int | None = None


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher submitit needs the submitit package, which is an optional extra. Install "
                        "it with `.venv/bin/pip install submitit` (or `pip install 'dmvae-bench[cluster]'`), or "
                        "leave out --launcher to run the study in this process (or under torchrun).") from None
    return submitit


class StudyJob:
    """What one job runs: the study command line for one prior and training seed."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def __call__(self) -> int:
        submitit = _submitit()
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # several ranks in this job: the variables torchrun would set
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from bench.cli import main

        return main(self.argv)

    def checkpoint(self, *args, **kwargs):
        """Preempted or out of time: submit the same job again; it resumes from its stage store."""
        return _submitit().helpers.DelayedSubmission(StudyJob(self.argv))


def job_dir(out: Path, prior: str, seed: int) -> Path:
    return Path(out) / "jobs" / f"{prior.replace(':', '_').replace('/', '_')}-seed{seed}"


def launch(base_argv: list[str], priors: list[str], seeds: tuple[int, ...], out: Path,
           settings: JobSettings) -> int:
    """Submit one job per prior and training seed, wait for them, merge the finished ones into `out`.

    base_argv: the study's command line without --priors, --out and the launcher flags.
    Returns the exit code: 0 when every job finished with every prior ok, else 1.
    """
    import json

    from bench.io import atomic_write_json

    submitit = _submitit()
    if settings.cluster not in CLUSTERS:
        raise UserError(f"--slurm-cluster must be one of {', '.join(CLUSTERS)}, got '{settings.cluster}'.")
    logs = Path(out) / "jobs" / "logs"
    executor = submitit.AutoExecutor(folder=str(logs), cluster=None if settings.cluster == "auto"
                                     else settings.cluster)
    params = dict(timeout_min=settings.time_min, nodes=1, tasks_per_node=max(1, settings.gpus), name="dmvae-bench")
    if settings.gpus:
        params["gpus_per_node"] = settings.gpus
    if settings.mem_gb:
        params["mem_gb"] = settings.mem_gb
    if settings.cpus_per_task:
        params["cpus_per_task"] = settings.cpus_per_task
    if settings.partition:
        params["slurm_partition"] = settings.partition
    executor.update_parameters(**params)
    plan = [(p, s, job_dir(out, p, s)) for p in priors for s in seeds]
    jobs = []
    for p, s, d in plan:
        argv = [*base_argv, "--priors", p, "--set", f"training_seeds={s}", "--out", str(d)]
        jobs.append(executor.submit(StudyJob(argv)))
    record = {"executor": executor.cluster, "parameters": params,
              "jobs": [{"prior": p, "training_seed": s, "dir": str(d), "job_id": str(j.job_id)}
                       for (p, s, d), j in zip(plan, jobs)]}
    atomic_write_json(Path(out) / "jobs" / "launch.json", record)
    print(f"launcher: {len(jobs)} jobs submitted ({executor.cluster}); logs in {logs}", flush=True)
    codes = []
    for (p, s, d), job in zip(plan, jobs):
        try:
            codes.append(job.result())
        except Exception as e:  # noqa: BLE001  (a failed job loses its own row only)
            codes.append(1)
            print(f"launcher: job {p} seed {s} failed: {str(e).splitlines()[-1] if str(e) else type(e).__name__}",
                  flush=True)
        print(f"launcher: {p} seed {s}: exit {codes[-1]} ({d})", flush=True)
    done = [d for _, _, d in plan if (d / "results.json").is_file()]
    if not done:
        raise RuntimeError(f"no job wrote results; see the job logs in {logs}")
    from reports import build_report
    from reports.merge import write_merged

    write_merged(Path(out), done)
    md, page = build_report(Path(out))
    record["exit_codes"] = codes
    atomic_write_json(Path(out) / "jobs" / "launch.json", json.loads(json.dumps(record, default=str)))
    print(f"merged {len(done)} job folders into {out}\nreport: {md}\nreport: {page}")
    return 0 if all(c == 0 for c in codes) else 1
