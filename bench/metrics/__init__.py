"""Evaluation pipeline: features -> statistics -> distance, each step cached by content hash."""
