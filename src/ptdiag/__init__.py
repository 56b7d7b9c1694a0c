"""ptdiag: diagnose PyTorch training problems by running the training."""

__version__ = "0.1.0"
