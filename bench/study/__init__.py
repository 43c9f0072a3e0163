"""The latent-prior study (docs/method.md sections 3 and 6): one DMVAE per prior, a downstream generator, metrics.

    cfg = resolve(StudyConfig, STUDY_PRESETS, "cpu", overrides=["generator.steps=2000"])  # config.py
    results = run_study(cfg, ["gaussian", "dino"], Path("runs/study"))                    # runner.py

Stage outputs live under <out>/stages/<prior>/<stage>-<key>/ (stages.py), keyed by content;
`<out>/results.json` is the contract the reports read (runner.py's module doc lists it).
"""
