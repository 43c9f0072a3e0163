"""The paper's 2D toy (Fig. 3), measured: uniform points matched to a target by several objectives."""
