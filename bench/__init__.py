"""dmvae-bench: a benchmark of latent priors for image tokenizers (DMVAE, arXiv 2512.07778)."""
__version__ = "0.1.0"
