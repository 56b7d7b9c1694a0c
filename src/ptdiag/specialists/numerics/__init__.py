"""The numerics specialist."""
