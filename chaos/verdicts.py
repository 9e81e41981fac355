"""The invariants of a chaos run, checked on its record alone (pure: no cluster, no model),
and the figures a report prints. Each verdict names the steps that broke it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import pairwise

from chaos.record import RunRecord, StepRecord

# Statuses a controller is told to retry: shed, nothing could serve, the deadline ran out.
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")
LABELLED = ("FULL", "EARLY_EXIT", "FALLBACK")
# An attempt may outlast its gRPC deadline by this much (thread wake-ups on a loaded machine)
# before it counts as hanging.
HANG_GRACE_S = 0.5
REFERENCE_ATOL = 1e-4
SHOWN = 20  # offending steps named in a verdict's message


@dataclass(frozen=True)
class Verdict:
    invariant: str
    ok: bool
    checked: int  # how many things were checked (steps, robots, windows)
    offending: list[str] = field(default_factory=list)  # "robot R seq S: why"
    note: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "invariant": self.invariant,
            "ok": self.ok,
            "checked": self.checked,
            "offending": self.offending,
            "note": self.note,
        }


INVARIANTS: dict[str, str] = {
    "answered-in-time": "every attempt answered before its deadline (plus a grace) with FULL, "
    "EARLY_EXIT or FALLBACK, or an explicit retryable status; none hangs",
    "exactly-once": "acknowledged seqs are 1..n per robot, none applied twice or skipped, and "
    "the store's seq equals the robot's (where the durability level promises it)",
    "labelled": "every answer carries its serve mode (no degraded answer unlabelled)",
    "state-equals-reference": "every FULL and EARLY_EXIT answer equals the never-failed "
    "reference replayed offline from the record, unless a state reset was announced before it",
    "durable": "no acknowledged step lost by a robot that asked for wait_replicas >= 1",
    "safety-never-shed": "no attempt of a SAFETY robot was shed (RESOURCE_EXHAUSTED)",
    "one-leader-per-stage": "no two replicas lead the same stage under simultaneously live "
    "leases (as etcd's leader key and the replicas' own Info say), and no lease is claimed by two "
    "replicas",
    "faults-injected": "every scheduled fault was injected and its recovery action completed",
    "processes-gone": "every process the suite started is gone at the end",
}


def _step(s: StepRecord, why: str) -> str:
    return f"robot {s.robot} seq {s.seq} at {s.sent_s:.2f}s: {why}"


def _verdict(name: str, checked: int, offending: list[str], note: str = "") -> Verdict:
    shown = offending[:SHOWN] + (
        [f"... and {len(offending) - SHOWN} more"] if offending[SHOWN:] else []
    )
    return Verdict(name, not offending, checked, shown, note)


def answered_in_time(record: RunRecord) -> Verdict:
    bad = []
    for s in record.steps:
        if s.code != "OK" and s.code not in RETRYABLE:
            bad.append(_step(s, f"status {s.code} is neither an answer nor retryable"))
        elif s.latency_s > record.step_deadline_s + HANG_GRACE_S:
            bad.append(_step(s, f"{s.code} after {s.latency_s:.2f}s, past the deadline"))
    return _verdict("answered-in-time", len(record.steps), bad)


def redis_primary_killed(record: RunRecord) -> bool:
    return any(f.fault == "kill-redis-primary" for f in record.faults)


def exactly_once(record: RunRecord) -> Verdict:
    bad, excused = [], 0
    lossy = redis_primary_killed(record)
    for end in record.ends:
        ok = [s for s in record.steps if s.robot == end.robot and s.code == "OK"]
        seqs = [s.seq for s in ok]
        for index, s in enumerate(ok):
            if s.seq != index + 1:
                bad.append(_step(s, f"acknowledged as step {index + 1} of the run"))
                break
        if len(ok) != end.acked:
            bad.append(f"robot {end.robot}: {end.acked} acknowledged, {len(seqs)} recorded")
        if end.error and not (lossy and end.wait_replicas == 0):
            bad.append(f"robot {end.robot}: stopped by {end.error}")
        if end.stored_seq != end.acked:
            if lossy and end.wait_replicas == 0:
                excused += 1
            else:
                bad.append(
                    f"robot {end.robot}: the store holds seq {end.stored_seq}, the robot "
                    f"acknowledged {end.acked}"
                )
    note = (
        f"{excused} robot(s) with wait_replicas=0 lost steps to the Redis primary kill "
        "(see durable)"
        if excused
        else ""
    )
    return _verdict("exactly-once", len(record.ends), bad, note)


def labelled(record: RunRecord) -> Verdict:
    ok = [s for s in record.steps if s.code == "OK"]
    bad = [_step(s, f"serve mode {s.mode or 'missing'}") for s in ok if s.mode not in LABELLED]
    return _verdict("labelled", len(ok), bad)


def state_equals_reference(record: RunRecord) -> Verdict:
    compared = [s for s in record.steps if s.code == "OK" and s.ref_error is not None]
    bad = [
        _step(s, f"{s.mode} answer off the reference by {s.ref_error:.2e}")
        for s in compared
        if s.ref_error is not None and s.ref_error > REFERENCE_ATOL
    ]
    resets = sum(s.state_reset for s in record.steps if s.code == "OK")
    note = (
        f"{resets} answer(s) announced a state reset; later ones are not compared" if resets else ""
    )
    return _verdict("state-equals-reference", len(compared), bad, note)


def durable(record: RunRecord) -> Verdict:
    """Per durability level: a robot with wait_replicas >= 1 must keep every acknowledged
    step; what robots without it lost is reported in the note (the documented cost)."""
    bad, lost_unreplicated = [], 0
    for end in record.ends:
        lost = end.acked - end.stored_seq if end.stored_seq is not None else end.acked
        if end.wait_replicas >= 1 and lost > 0:
            bad.append(f"robot {end.robot} (wait_replicas={end.wait_replicas}): {lost} lost")
        elif end.wait_replicas == 0 and lost > 0:
            lost_unreplicated += lost
    note = (
        f"robots with wait_replicas=0 lost {lost_unreplicated} acknowledged step(s)"
        if lost_unreplicated
        else ""
    )
    return _verdict("durable", len(record.ends), bad, note)


def safety_never_shed(record: RunRecord) -> Verdict:
    safety = {e.robot for e in record.ends if e.priority == "SAFETY"}
    steps = [s for s in record.steps if s.robot in safety]
    bad = [_step(s, "a SAFETY step shed") for s in steps if s.code == "RESOURCE_EXHAUSTED"]
    return _verdict("safety-never-shed", len(steps), bad)


def one_leader_per_stage(record: RunRecord) -> Verdict:
    """Per poll of the leader watch (chaos/leaders.py): at most one replica per stage claims
    leadership (by etcd's key or its own word) under a live lease; and over the run every
    lease is claimed by one replica only. A run without a single poll fails: nothing was
    checked."""
    bad: list[str] = []
    polls: dict[tuple[float, int], set[str]] = {}
    holders: dict[int, set[str]] = {}
    for s in record.leaders:
        holders.setdefault(s.lease_id, set()).add(s.replica_id)
        if s.lease_live:
            polls.setdefault((s.at_s, s.stage), set()).add(f"{s.replica_id} (lease {s.lease_id:x})")
    for (at, stage), leaders in sorted(polls.items()):
        if len(leaders) > 1:
            bad.append(f"stage {stage} at {at:.2f}s: {', '.join(sorted(leaders))} lead at once")
    for lease, replicas in sorted(holders.items()):
        if len(replicas) > 1:
            bad.append(f"lease {lease:x} claimed by {', '.join(sorted(replicas))}")
    if not record.leaders:
        bad.append("no leader observed: the leader watch recorded nothing")
    return _verdict("one-leader-per-stage", record.leader_polls, bad)


def faults_injected(record: RunRecord) -> Verdict:
    bad = [
        f"{f.fault} on {f.target} at {f.start_s:.2f}s: {f.detail}"
        for f in record.faults
        if not f.ok
    ]
    if len(record.faults) < len(record.schedule):
        bad.append(f"{len(record.schedule)} faults scheduled, {len(record.faults)} injected")
    return _verdict("faults-injected", len(record.schedule), bad)


def processes_gone(record: RunRecord) -> Verdict:
    return _verdict("processes-gone", 1, [f"still running: {p}" for p in record.leftover_processes])


def check(record: RunRecord) -> list[Verdict]:
    """Every invariant's verdict, in INVARIANTS order."""
    return [
        answered_in_time(record),
        exactly_once(record),
        labelled(record),
        state_equals_reference(record),
        durable(record),
        safety_never_shed(record),
        one_leader_per_stage(record),
        faults_injected(record),
        processes_gone(record),
    ]


def step_waits(record: RunRecord) -> list[tuple[float, float]]:
    """(answered at, waited) per acknowledged step: from its first attempt's sending to its
    answer, retries included (what the robot waited for that action)."""
    out: list[tuple[float, float]] = []
    firsts: dict[int, float] = {}  # robot -> first attempt's sending of its pending seq
    for s in sorted(record.steps, key=lambda s: (s.robot, s.sent_s)):
        firsts.setdefault(s.robot, s.sent_s)
        if s.code == "OK":
            out.append((s.answered_s, s.answered_s - firsts.pop(s.robot)))
    return out


def summary(record: RunRecord) -> dict[str, object]:
    """The figures of a run: steps, answers by mode, failures by status, worst latencies, and
    per fault how long the robots saw anything other than FULL answers after it."""
    ok = [s for s in record.steps if s.code == "OK"]
    waits = [w for _, w in step_waits(record)]
    return {
        "attempts": len(record.steps),
        "acknowledged": len(ok),
        "modes": dict(Counter(s.mode for s in ok)),
        "failed": dict(Counter(s.code for s in record.steps if s.code != "OK")),
        "worst_attempt_s": round(max((s.latency_s for s in record.steps), default=0.0), 4),
        "worst_step_wait_s": round(max(waits, default=0.0), 4),
        "worst_gap_s": round(worst_gap_s(record), 4),
        "recovery_s": [round(recovery_s(record, i), 3) for i in range(len(record.faults))],
    }


def worst_gap_s(record: RunRecord) -> float:
    """The longest a robot went without any answer (to any attempt): from one answer to the
    next one's, the robot's own period included. A gap much longer than the worst attempt
    means the robot could not even send (its process starved of CPU, say)."""
    gaps = []
    for robot in range(record.robots):
        answered = sorted(s.answered_s for s in record.steps if s.robot == robot)
        gaps += [b - a for a, b in pairwise(answered)]
    return max(gaps, default=0.0)


def recovery_s(record: RunRecord, index: int) -> float:
    """From fault `index`'s start to the last non-FULL answer or failed attempt before the
    next fault (0 if the robots saw none)."""
    window = record.faults[index]
    until = record.faults[index + 1].start_s if index + 1 < len(record.faults) else float("inf")
    degraded = [
        s.answered_s
        for s in record.steps
        if window.start_s <= s.answered_s < until and (s.code != "OK" or s.mode != "FULL")
    ]
    return max(degraded, default=window.start_s) - window.start_s
