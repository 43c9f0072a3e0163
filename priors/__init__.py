"""Reference priors p_r(z) of the study (docs/method.md section 4), one module per family.

Importing this package registers the built-in priors; a user's own prior is named in
--priors as `module:Class` (a subclass of priors.base.Prior).
"""
from priors.registry import available, get_prior, register_prior  # noqa: F401
from priors import analytic  # noqa: F401,E402  (registers gaussian, gmm)
from priors import features  # noqa: F401,E402  (registers dino, resnet, subdino, text)
from priors import autoencoder  # noqa: F401,E402  (registers vae, noise)
