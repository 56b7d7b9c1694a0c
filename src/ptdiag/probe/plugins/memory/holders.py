"""Who keeps memory across training steps: the user's variables that hold autograd graphs.

At a step boundary the probe looks at the local variables of the user's frames on the
stack (the training loop and its callers) for two measurable patterns:

- a tensor whose autograd graph reaches the graph of a loss that was already
  backward'd at an earlier step (`total_loss += loss`): every step chains one more
  graph to it. Losses are tagged in their graph node's `metadata` when backward runs,
  so the test is a short walk of `grad_fn.next_functions`, not a guess;
- a container (list, tuple, dict, deque; one level of nesting) of tensors with autograd
  graphs that grows from one boundary to the next (`outputs.append(model(x))`,
  `history["loss"].append(loss)`).

Where the variable grows is read from the function's own source: the augmented
assignment, the self-referencing assignment or the `append`/`extend` call on it.
"""

from __future__ import annotations

import ast
import collections
from dataclasses import asdict, dataclass
from functools import lru_cache

from ptdiag.location import format_location, is_user_file

BACKWARD_TAG = "ptdiag_backward_step"
FORWARD_TAG = "ptdiag_forward_step"  # a model output's node: the model's graph holds no loss, stop there
MAX_GRAPH_NODES = 512  # nodes visited per tensor; an earlier step's loss sits a few hops away
MAX_CONTAINER_ITEMS = 64  # the newest items of a container are enough to see what it keeps
GROWING_CALLS = frozenset({"append", "extend", "insert", "add", "update", "appendleft", "setdefault"})
CONTAINERS = (list, tuple, dict, collections.deque, set)


@dataclass
class Holder:
    name: str
    kind: str  # "graph_tensor" or "container"
    location: str | None  # where it grows (file:line)
    function: str
    count: int  # tensors with a graph it holds (containers) or 1
    items: int  # len() of a container
    tensor_bytes: int  # bytes of the held tensors themselves (their graphs come on top)
    from_step: int | None = None  # earliest backward'd step its graph still reaches

    def to_dict(self) -> dict:
        return asdict(self)


def tag_backward(loss, step: int) -> None:
    """Mark the loss's graph node: a later tensor whose graph reaches it holds an old graph."""
    node = loss.grad_fn
    if node is not None:
        node.metadata[BACKWARD_TAG] = step


def tag_forward(output, step: int) -> None:
    output.grad_fn.metadata[FORWARD_TAG] = step


def earliest_backward_reached(node, before_step: int) -> int | None:
    """Smallest backward tag < before_step reachable from `node` (bounded breadth-first walk)."""
    queue, seen, found = collections.deque([node]), set(), None
    while queue and len(seen) < MAX_GRAPH_NODES:
        current = queue.popleft()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        metadata = current.metadata
        tag = metadata.get(BACKWARD_TAG) if metadata else None
        if tag is not None and tag < before_step:
            found = tag if found is None else min(found, tag)
            continue  # beyond a tagged loss lies that step's graph: nothing new
        if metadata and FORWARD_TAG in metadata:
            continue
        queue.extend(n for n, _ in current.next_functions)
    return found


def _graph_tensors(values, torch) -> list:
    return [v for v in values if isinstance(v, torch.Tensor) and v.grad_fn is not None]


def _container_items(value, depth: int = 1) -> list:
    """The newest items, looking one level into nested containers (`history = {"loss": [...]}`)."""
    items = list(value.values()) if isinstance(value, dict) else value
    try:
        items = list(items)[-MAX_CONTAINER_ITEMS:]
    except TypeError:
        return []
    if depth == 0:
        return items
    return [leaf for item in items
            for leaf in (_container_items(item, depth - 1) if isinstance(item, CONTAINERS) else [item])]


def _items(value) -> int:
    """Total length, nested containers included: what grows when a nested list grows."""
    return len(value) + sum(len(v) for v in (value.values() if isinstance(value, dict) else value)
                            if isinstance(v, CONTAINERS))


def scan(frame, step: int, torch) -> list[Holder]:
    """Holders in the user's frames from `frame` outwards (innermost first)."""
    holders, seen = [], set()
    while frame is not None:
        code = frame.f_code
        if is_user_file(code.co_filename):
            for name, value in list(frame.f_locals.items()):
                if id(value) in seen:
                    continue
                seen.add(id(value))
                holder = _holder(name, value, code, step, torch)
                if holder is not None:
                    holders.append(holder)
        frame = frame.f_back
    return holders


def _holder(name: str, value, code, step: int, torch) -> Holder | None:
    if isinstance(value, torch.Tensor):
        if value.grad_fn is None:
            return None
        reached = earliest_backward_reached(value.grad_fn, step)
        if reached is None:
            return None
        return Holder(name, "graph_tensor", growth_line(code, name), code.co_name, 1, 1,
                      value.numel() * value.element_size(), reached)
    if isinstance(value, CONTAINERS) and not isinstance(value, (str, bytes)) and len(value):
        held = _graph_tensors(_container_items(value), torch)
        if not held:
            return None
        return Holder(name, "container", growth_line(code, name), code.co_name, len(held), _items(value),
                      sum(t.numel() * t.element_size() for t in held))
    return None


def growth_line(code, name: str) -> str | None:
    """file:line where `name` grows inside the function of `code`, from its source."""
    line = _growth_lines(code.co_filename, code.co_firstlineno, _last_line(code), name)
    return format_location(code.co_filename, line) if line else None


def _last_line(code) -> int:
    return max((line for _, _, line in code.co_lines() if line is not None), default=code.co_firstlineno)


@lru_cache(maxsize=64)
def _module_ast(filename: str):
    try:
        with open(filename, encoding="utf-8") as fh:
            return ast.parse(fh.read(), filename)
    except (OSError, SyntaxError, ValueError):
        return None


def _names(node) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


@lru_cache(maxsize=256)
def _growth_lines(filename: str, first: int, last: int, name: str) -> int | None:
    tree = _module_ast(filename)
    if tree is None:
        return None
    lines = [node.lineno for node in ast.walk(tree)
             if first <= getattr(node, "lineno", 0) <= last and _grows(node, name)]
    return min(lines, default=None)


def _grows(node, name: str) -> bool:
    """`name += x`, `name = f(name, ...)`, `name.append(x)` and kin, `name[k] = x`."""
    if isinstance(node, ast.AugAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    if isinstance(node, ast.Assign):
        return any((isinstance(t, ast.Name) and t.id == name and name in _names(node.value))
                   or (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == name)
                   for t in node.targets)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in GROWING_CALLS):
        return False
    target = node.func.value  # `name.append(x)` or `name[key].append(x)`
    target = target.value if isinstance(target, ast.Subscript) else target
    return isinstance(target, ast.Name) and target.id == name
