"""What the program's model runs inside: the wrappers around the user's module and the
autocast around its forward.

Plugins that re-run the model on their own (numerics' replay, memory's fit estimate) need
the user's module without its wrappers: a DDP wrapper's reducer would run collectives
on one rank alone (on gloo the fake step's hook results are rejected, on NCCL
storage-less tensors would reach the library), a compiled one would compile again under
the plugin's modes, and the module names the user knows are the inner module's. FSDP
cannot be unwrapped this way: its parameters are sharded and gathered by collectives
inside the forward, so a plugin that needs a whole module must decline (`sharded`).

They also need the precision the program's forward runs in: an estimate or a replay
outside the program's autocast sees float32 activations where the program has 16-bit
ones.
"""

from __future__ import annotations

import contextlib

# wrapper class -> the attribute holding the module it wraps (torch.nn.parallel's DDP and
# DataParallel, torch.compile's OptimizedModule)
WRAPPERS = {"DistributedDataParallel": "module", "DataParallel": "module", "OptimizedModule": "_orig_mod"}
# classes whose modules hold sharded parameters (FSDP1's wrapper, FSDP2's fully_shard mixin)
SHARDING = ("FullyShardedDataParallel", "FSDPModule")


def unwrapped(model):
    """The user's module inside DDP/DataParallel/torch.compile, innermost first."""
    while type(model).__name__ in WRAPPERS and hasattr(model, WRAPPERS[type(model).__name__]):
        model = getattr(model, WRAPPERS[type(model).__name__])
    return model


def sharded(model) -> str | None:
    """The name of the FSDP class that shards a module of `model`, or None."""
    for module in model.modules():
        found = next((c.__name__ for c in type(module).__mro__ if c.__name__ in SHARDING), None)
        if found is not None:
            return found
    return None


def autocast_state(torch, device_type: str) -> dict | None:
    """The autocast the program's code runs in now on `device_type`, or None: what a
    plugin's own run of the model must enter to see the program's precision."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return {"device": device_type, "dtype": str(torch.get_autocast_dtype(device_type)).replace("torch.", "")}


def autocast(torch, state: dict | None):
    """A context that enters the autocast `autocast_state` observed (a no-op for None)."""
    if state is None:
        return contextlib.nullcontext()
    return torch.autocast(state["device"], dtype=getattr(torch, state["dtype"]))
