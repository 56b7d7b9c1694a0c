"""The loss computation's autograd graph, read once: what a loss that cannot change looks like.

A loss that never moves is often decided by its graph, not by its numbers: a softmax (or
log-softmax, inside cross-entropy) over a dimension of size 1 is exactly 1 (0) whatever
the logits are, so the loss is constant and its gradient is zero. The graph says it at
the first backward, before any step is wasted.
"""

from __future__ import annotations

SOFTMAX_NODES = frozenset({"LogSoftmaxBackward0", "SoftmaxBackward0"})
MAX_NODES = 64  # a loss is a handful of nodes; beyond that the walk is inside the model


def _softmax_size(node) -> int | None:
    """The size of the dimension a softmax node normalised over, from what it saved."""
    try:
        result, dim = node._saved_result, node._saved_dim
        return int(result.shape[dim % result.dim()]) if result.dim() else 1
    except (AttributeError, RuntimeError, IndexError):
        return None


def between(loss_node, stop_nodes: set, limit: int = MAX_NODES) -> tuple[list[str], list[str]]:
    """Autograd node names from the loss down to the model's outputs (the loss computation),
    and the softmax nodes among them (the model's output node included) that normalise over one class."""
    names, one_class, todo, seen = [], [], [loss_node], set()
    while todo and len(seen) < limit:
        node = todo.pop(0)
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() in SOFTMAX_NODES and _softmax_size(node) == 1:
            one_class.append(node.name())
        if node in stop_nodes:
            continue
        names.append(node.name())
        todo.extend(n for n, _ in node.next_functions)
    return names, one_class
