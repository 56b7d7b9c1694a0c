"""Grouping allocated bytes by the user source line that allocated them."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from ptdiag.specialists.memory.snapshot_format import Frame
from ptdiag.specialists.memory.snapshot_frames import Site, infer_phase, user_site


@dataclass(frozen=True)
class SiteTotal:
    site: Site
    bytes: int
    count: int
    phase: str | None  # the phase that allocated most of these bytes

    def to_dict(self) -> dict[str, object]:
        return {"location": self.site.location, "file": self.site.file, "line": self.site.line,
                "bytes": self.bytes, "count": self.count, "phase": self.phase}


def top_sites(
    allocations: Iterable[tuple[int, tuple[Frame, ...]]],
    user_roots: list[str] | None,
    limit: int,
) -> list[SiteTotal]:
    """The `limit` sites holding the most bytes, from (bytes, frames) pairs; largest first."""
    size: Counter[Site] = Counter()
    count: Counter[Site] = Counter()
    phase_bytes: dict[Site, Counter[str | None]] = defaultdict(Counter)
    for nbytes, frames in allocations:
        site = user_site(frames, user_roots)
        size[site] += nbytes
        count[site] += 1
        phase_bytes[site][infer_phase(frames)] += nbytes
    ranked = sorted(size, key=lambda s: (-size[s], s.location))[:limit]
    return [SiteTotal(s, size[s], count[s], _heaviest(phase_bytes[s])) for s in ranked]


def _heaviest(phases: Counter[str | None]) -> str | None:
    return max(phases, key=lambda p: (phases[p], p is not None, p or ""))
