"""Where each rank stands in each process group's sequence of collectives, and who holds whom up.

Every member of a process group issues the same collectives in the same order, numbered by
`collective_seq_id`, and the ops of one group run in order on one stream. So, per group:
the furthest collective that some member waits in (issued, not completed) is where the
group hangs; members that never issued it, or still sit on an earlier one their peers
finished, are the ones it waits for. Chaining those "waits for" edges across groups
separates the root ranks from ranks that only wait on a rank that is itself waiting.

Point-to-point ops (send/recv) are numbered per rank pair, not per group, so their numbers
cannot be compared across ranks; they are counted, not matched.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

COMPLETED = "completed"

# Why a member holds its group up: (short phrase, what to look for on that rank).
LAG_REASONS = {
    "behind": (
        "is stuck in an earlier collective that its peers completed",
        "its GPU stopped completing work: look in its log for a CUDA/driver error (Xid, ECC,"
        " illegal memory access) or a kernel that never finished",
    ),
    "never_reached": (
        "never issued this collective",
        "its Python never got there: look for an exception, a hang before this point, or a"
        " code path that skips or reorders this collective on that rank",
    ),
    "different_op": (
        "issued a different collective at this sequence number",
        "ranks call collectives in different orders: look for rank-dependent control flow"
        " around the collective",
    ),
    "no_dump": (
        "left no dump while its peers wait for it",
        "the process probably died before the dump: look for a crash, OOM-kill or"
        " segfault in its log",
    ),
}


@dataclass(frozen=True)
class ProcessGroup:
    name: str
    desc: str
    ranks: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.desc}[{self.name}]" if self.desc and self.desc != self.name else f"pg[{self.name}]"

    def to_evidence(self) -> dict[str, Any]:
        return {"name": self.name, "desc": self.desc, "ranks": list(self.ranks)}


@dataclass
class Position:
    """One rank's place in one group's collective sequence (None where the dump cannot say)."""

    rank: int
    last_enqueued: int | None
    last_completed: int | None
    pending: dict[str, Any] | None  # the earliest collective issued but not completed

    @property
    def pending_seq(self) -> int | None:
        return None if self.pending is None else collective_seq(self.pending)


@dataclass
class Lag:
    rank: int
    reason: str  # a key of LAG_REASONS
    position: Position | None  # None for a rank without a dump

    def to_evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "why": LAG_REASONS[self.reason][0]}
        if self.position is not None:
            out["last_completed_seq"] = self.position.last_completed
            out["last_enqueued_seq"] = self.position.last_enqueued
            if self.position.pending is not None:
                out["stuck_seq"] = self.position.pending_seq
                out["stuck_collective"] = self.position.pending.get("profiling_name")
        return out


@dataclass
class Stall:
    """A group whose furthest collective waits on some of its members."""

    group: ProcessGroup
    seq: int
    collective: str
    waiting: dict[int, str]  # rank -> state of its entry ("scheduled" / "started")
    lagging: list[Lag]
    ops_at_seq: dict[int, str] = field(default_factory=dict)  # filled when ranks disagree

    def to_evidence(self) -> dict[str, Any]:
        out = {
            "process_group": self.group.to_evidence(),
            "collective": self.collective,
            "seq": self.seq,
            "waiting_ranks": sorted(self.waiting),
            "waiting_states": dict(sorted(self.waiting.items())),
            "lagging": {lag.rank: lag.to_evidence() for lag in self.lagging},
        }
        if self.ops_at_seq:
            out["ops_at_seq"] = dict(sorted(self.ops_at_seq.items()))
        return out


def collective_seq(entry: dict[str, Any]) -> int:
    # Dumps before format 2.2 numbered collectives as `seq_id`.
    return int(entry.get("collective_seq_id", entry.get("seq_id", -1)))


def is_p2p(entry: dict[str, Any]) -> bool:
    if "is_p2p" in entry:
        return bool(entry["is_p2p"])
    name = str(entry.get("profiling_name", ""))
    return "send" in name or "recv" in name


def group_name(entry: dict[str, Any]) -> str:
    return str(entry["process_group"][0])


def _parse_ranks(ranks: Any) -> tuple[int, ...]:
    # pg_config stores the member list as its string form, "[0, 1, 2]".
    return tuple(int(r) for r in (json.loads(ranks) if isinstance(ranks, str) else ranks))


def process_groups(dumps: dict[int, dict[str, Any]]) -> dict[str, ProcessGroup]:
    """Every group named in any dump, with its members (from pg_config, else from who used it)."""
    groups: dict[str, ProcessGroup] = {}
    for dump in dumps.values():
        for name, config in (dump.get("pg_config") or {}).items():
            groups.setdefault(str(name), ProcessGroup(str(name), str(config.get("desc", "")),
                                                      _parse_ranks(config.get("ranks", []))))
    users: dict[str, set[int]] = defaultdict(set)
    descs: dict[str, str] = {}
    for rank, dump in dumps.items():
        for entry in dump["entries"]:
            users[group_name(entry)].add(rank)
            descs[group_name(entry)] = str(entry["process_group"][1])
    for name, ranks in users.items():
        groups.setdefault(name, ProcessGroup(name, descs[name], tuple(sorted(ranks))))
    return groups


def _status_for(dump: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, int] | None:
    """pg_status of the group these entries belong to, if it can be trusted for collectives.

    pg_status is keyed by the rank-local pg_id, known only through the entries; a group that
    also does send/recv may count those in it, so it is used only when it agrees with the entries.
    """
    status = (dump.get("pg_status") or {}).get(str(entries[0].get("pg_id")))
    if not status or any(is_p2p(e) for e in dump["entries"] if e.get("pg_id") == entries[0].get("pg_id")):
        return None
    return status


def _position(rank: int, dump: dict[str, Any], entries: list[dict[str, Any]]) -> Position:
    ordered = sorted(entries, key=lambda e: (collective_seq(e), e.get("record_id", 0)))
    pending = next((e for e in ordered if e.get("state") != COMPLETED), None)
    completed = [collective_seq(e) for e in ordered if e.get("state") == COMPLETED]
    last_enqueued = collective_seq(ordered[-1])
    # Ops of one group complete in order, so the one before the first pending one is done.
    last_completed = max(completed) if completed else (
        collective_seq(pending) - 1 if pending is not None else None)
    status = _status_for(dump, entries)
    if status is not None:
        enqueued = int(status.get("last_enqueued_collective", -1))
        done = int(status.get("last_completed_collective", -1))
        agrees = enqueued >= last_enqueued and (pending is None or done < collective_seq(pending))
        if agrees:
            last_enqueued, last_completed = enqueued, max(done, last_completed or -1)
    return Position(rank, last_enqueued, last_completed, pending)


def positions(dumps: dict[int, dict[str, Any]]) -> dict[str, dict[int, Position]]:
    """Group name -> rank -> Position, for every rank whose dump holds collectives of that group."""
    by_group: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rank, dump in dumps.items():
        for entry in dump["entries"]:
            if not is_p2p(entry):
                by_group[group_name(entry)][rank].append(entry)
    return {name: {rank: _position(rank, dumps[rank], entries) for rank, entries in ranks.items()}
            for name, ranks in by_group.items()}


def _disagreement(group: ProcessGroup, seq: int, at_seq: dict[int, Position]) -> Stall | None:
    """Ranks waiting at the same number but in different collectives: the minority lags."""
    ops = {rank: str(pos.pending.get("profiling_name")) for rank, pos in at_seq.items()}
    counts = Counter(ops.values()).most_common()
    if len(counts) < 2:
        return None
    majority = counts[0][0] if counts[0][1] > counts[1][1] else None  # a tie names no side
    waiting = {r: str(p.pending.get("state")) for r, p in at_seq.items() if majority in (None, ops[r])}
    lagging = [Lag(r, "different_op", p) for r, p in at_seq.items() if majority is None or ops[r] != majority]
    return Stall(group, seq, majority or "/".join(sorted(set(ops.values()))), waiting, lagging, ops)


def stall_of(group: ProcessGroup, members: dict[int, Position], dumped: set[int],
             suspects: set[int]) -> Stall | None:
    """The group's stall, or None when no member waits or all wait in the same collective.

    `suspects` are the ranks without a dump that may be blamed for that (see `stalls`).
    """
    waiting_seqs = [p.pending_seq for p in members.values() if p.pending is not None]
    if not waiting_seqs:
        return None
    seq = max(waiting_seqs)
    at_seq = {r: p for r, p in members.items() if p.pending_seq == seq}
    disagreement = _disagreement(group, seq, at_seq)
    if disagreement is not None:
        return disagreement
    lagging = []
    for rank in group.ranks:
        position = members.get(rank)
        if rank not in dumped:
            if rank in suspects:
                lagging.append(Lag(rank, "no_dump", None))
        elif position is None or (position.pending is None and (position.last_enqueued or -1) < seq):
            lagging.append(Lag(rank, "never_reached", position))
        elif position.pending is not None and position.pending_seq < seq:
            lagging.append(Lag(rank, "behind", position))
    if not lagging:
        return None
    first = next(iter(at_seq.values())).pending
    return Stall(group, seq, str(first.get("profiling_name")),
                 {r: str(p.pending.get("state")) for r, p in at_seq.items()}, lagging)


def world_ranks(dumped: set[int], groups: dict[str, ProcessGroup]) -> set[int]:
    """Every rank that some dump names as a group member, plus the ranks that dumped."""
    return set(dumped).union(*(group.ranks for group in groups.values()))


def stalls(groups: dict[str, ProcessGroup], by_group: dict[str, dict[int, Position]],
           dumped: set[int]) -> list[Stall]:
    """Every group stall. A rank without a dump is blamed only when most ranks did dump:
    then its silence is a measurement; when most dumps are absent (say one file was
    given), silence says nothing about that rank."""
    missing = world_ranks(dumped, groups) - dumped
    suspects = missing if len(missing) < len(dumped) else set()
    found = (stall_of(groups[name], members, dumped, suspects) for name, members in by_group.items())
    return [stall for stall in found if stall is not None]


def root_ranks(found: list[Stall]) -> list[int]:
    """Lagging ranks that wait on nobody outside their own circle: the start of the hang.

    Edges run from each waiting rank to the ranks its group waits for; the roots are the
    ranks of the sink components of that graph (a rank that waits only on ranks that,
    directly or not, wait on it).
    """
    waits_for: dict[int, set[int]] = defaultdict(set)
    for stall in found:
        for rank in stall.waiting:
            waits_for[rank].update(lag.rank for lag in stall.lagging)

    def reachable(start: int) -> set[int]:
        seen, todo = set(), [start]
        while todo:
            for nxt in waits_for.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    lagging = {lag.rank for stall in found for lag in stall.lagging}
    reach = {rank: reachable(rank) for rank in lagging}
    return sorted(r for r in lagging if all(r in reach[other] for other in reach[r]))
