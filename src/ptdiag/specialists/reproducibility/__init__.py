"""The reproducibility specialist."""
