"""The six specialists of the contract, each a package with one concern.

A specialist package may hold:
- `probe.py`: its in-process part, a `Plugin` subscribing to probe events (runs inside
  the user's processes; imported only when the specialist is in the plan);
- `analyse(run)` in `__init__.py`: turns a recorded run dir into an `Analysis`;
- artifact inspectors (modules with `sniff(path)` and `inspect(path)`), listed in
  `ptdiag.inspect.KINDS`.
"""

NAMES = ("memory", "performance", "numerics", "distributed", "reproducibility", "tracking")
