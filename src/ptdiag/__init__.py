"""ptdiag: diagnose PyTorch training problems by running the training."""

__version__ = "0.1.0"


def session(*args, **kwargs):
    """Diagnose training that runs in this process (notebooks, frameworks that own the
    loop): `with ptdiag.session("loss is NaN"): trainer.fit(model)`. See ptdiag.api."""
    from ptdiag.api import session as _session

    return _session(*args, **kwargs)
