"""One Report, several renderers (terminal, JSON); each renderer is its own module."""
