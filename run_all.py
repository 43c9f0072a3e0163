#!/usr/bin/env python
"""Entry point of the latent-prior benchmark; see `python run_all.py --help`."""
import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
