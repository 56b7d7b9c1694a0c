"""The distributed specialist."""
