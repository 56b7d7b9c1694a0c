"""The tracking specialist."""
