"""The performance specialist."""
