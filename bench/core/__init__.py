"""The DMVAE core: flow matching, score networks, the distribution-matching update."""
