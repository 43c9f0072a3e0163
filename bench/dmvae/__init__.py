"""The training stages of one prior's DMVAE run (docs/method.md sections 2 and 3), as library functions.

    s_real, norm = train_teacher(prior, TEACHER_PRESETS[p])                        # teacher.py
    start = pretrain_autoencoder(images, prior.latent_shape, PRETRAIN_PRESETS[p],  # start.py
                                 DMVAE_PRESETS[p].tokenizer, reference=prior.reference_latents)
    enc, dec, s_fake, hist = train_dmvae(images, labels, prior, s_real, norm, DMVAE_PRESETS[p], start)  # dm_stage.py
    gen_norm = measure_norm(encode(enc, images), "DMVAE latents")                  # latent_norm.py
    model, ckpts, ghist = train_generator(encode_latents(enc, images, gen_norm), labels, K,
                                          GENERATOR_PRESETS[p])                    # generator.py
    images, labels = generate(model, n, K, seed, steps, cfg, decoder=dec, norm=gen_norm)

The vae row replaces the first three lines by `train_vae_baseline` (vae_baseline.py: no S_real, no DM). Every
training function takes `checkpoint=<path stem>, checkpoint_every=N` to resume after a kill, and
runs unchanged under torchrun (loop.py: same global batch on every rank, averaged gradients).
"""
from bench.dmvae.autoencoder import TOKENIZER_PRESETS, TokenizerConfig, build_tokenizer  # noqa: F401
from bench.dmvae.generator import (GENERATOR_PRESETS, GeneratorConfig, encode_latents, generate,  # noqa: F401
                                   load_checkpoint, train_generator)
from bench.dmvae.latent_norm import LatentNorm, measure_norm  # noqa: F401
from bench.dmvae.dm_stage import DMVAE_PRESETS, DMVAEConfig, encode, train_dmvae  # noqa: F401
from bench.dmvae.start import (PRETRAIN_PRESETS, STARTS, PretrainConfig, Start, pretrain_autoencoder,  # noqa: F401
                               resolve_start)
from bench.dmvae.vae_baseline import baseline_budget, train_vae_baseline  # noqa: F401
from bench.dmvae.teacher import (TEACHER_PRESETS, TeacherConfig,  # noqa: F401
                                 train_teacher)
