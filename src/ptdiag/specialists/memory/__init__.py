"""The memory specialist."""
