"""Pure decisions of sharing hosts: the queue's order, taking several hosts all or nothing, and what
to do with a host that keeps being excluded. No I/O and no clock: callers feed answers and times.

The hosts enforce the queue (see `launcher.hostside.hoststate`); this module decides what a launcher
does with their answers:

* `QueueKey`: the global order of waiting launches, (wait start on the launcher's clock, job id).
  Every host orders two launches alike, so two waiting jobs never wait for each other in a cycle.
* `MultiHostAcquisition`: a job needs a lease on every one of its hosts. It registers a ticket on
  every host first (waiting or not), then tries every host at once; if any refuses, it releases what
  it took and waits on the first refusing host in one global order (`host_order`), or fails when it
  does not wait, before trying them all again. It never holds one host while waiting for another, so
  no cycle of jobs can form; the tickets keep the earliest launch from being overtaken, even by a
  later one's passing hold (a later launch is refused wherever an earlier ticket wants the same
  devices), so trying all hosts at once costs one round trip instead of one per host.
* `judge_host`: after an exclusion a host is skipped for a cooldown that doubles (by default) with
  each exclusion in the window, up to a cap; excluded `cordon_after` times within the window, it is
  to be cordoned with that reason.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

# -- queue order

@dataclass(frozen=True, order=True)
class QueueKey:
    """A launch's place in every host's queue: earlier wait start first, then job id."""

    wait_start: float
    job: str

    def __post_init__(self):
        if not math.isfinite(self.wait_start):
            raise ValueError(f"wait_start must be a finite time, not {self.wait_start!r}")
        if not self.job:
            raise ValueError("job must be a job id")


def queue_key(wait_start: float, job: str) -> QueueKey:
    """The key of a launch that began to wait at `wait_start` (launcher clock, epoch seconds). A launch
    that does not wait gets the time it tries, so it comes after everyone already waiting."""
    return QueueKey(float(wait_start), job)


def host_order(hosts: Iterable[str]) -> Tuple[str, ...]:
    """The one order in which every launcher takes hosts: sorted, without repeats. Give each host by a
    name every launcher uses for it (e.g. the host name it reports in its snapshot)."""
    return tuple(sorted(set(hosts)))


# -- all or nothing over several hosts

class Outcome(str, enum.Enum):
    """A host's answer to one attempt."""

    GRANTED = "granted"      # the lease is taken
    REFUSED = "refused"      # busy or queued behind someone: may be granted later
    CORDONED = "cordoned"    # out of service: no use waiting
    ERROR = "error"          # unreachable, bad state, bad request: no use waiting


@dataclass(frozen=True)
class HostAnswer:
    host: str
    outcome: Outcome
    reason: str = ""
    report: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_report(cls, host: str, report: Mapping[str, Any]) -> HostAnswer:
        """The answer a host's report (`hoststate.evaluate`) stands for."""
        state = report.get("state")
        outcome = {"granted": Outcome.GRANTED, "cordoned": Outcome.CORDONED}.get(state, Outcome.REFUSED)
        return cls(host, outcome, str(report.get("reason", state)), dict(report))


class Phase(str, enum.Enum):
    REGISTERING = "registering"   # putting a ticket on every host
    ACQUIRING = "acquiring"       # trying every host at once
    WAITING = "waiting"           # released everything; waiting on the host that refused
    GRANTED = "granted"           # every lease held
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = (Phase.GRANTED, Phase.FAILED, Phase.CANCELLED)


class Action(str, enum.Enum):
    REGISTER = "register"   # put a ticket on each of `hosts`, then call `registered`
    TRY = "try"             # one attempt on each of `hosts` at once (no waiting), then call `answers`
    WAIT = "wait"           # wait on `hosts[0]` until it would grant, then call `ready`
    DONE = "done"           # every lease held: start the job; drop the tickets
    FAIL = "fail"           # give up (`reason`); drop the tickets


@dataclass(frozen=True)
class Step:
    """What the driver does next: first release the leases on `release`, then `action` on `hosts`."""

    action: Action
    hosts: Tuple[str, ...] = ()
    release: Tuple[str, ...] = ()
    reason: str = ""


class InvalidTransition(ValueError):
    """An event that the acquisition's current phase does not expect (a driver bug)."""


@dataclass
class MultiHostAcquisition:
    """One launch taking a lease on every one of `hosts`, all or nothing.

    Driver loop: `step = acq.start()`; carry out each `Step` and feed the result back with
    `registered`, `answers`, `ready` (or `cancel` at any time) until the step is DONE or FAIL.
    `wait` False (a launch without --wait): the first round with a refusal fails the launch. Tickets are
    registered either way: a launch that does not wait is ordered against concurrent ones like any other
    (its key is when it tries), so of two launches wanting the same devices the earlier is never
    refused because of the later one.
    """

    hosts: Sequence[str]
    wait: bool
    phase: Optional[Phase] = None
    taken: List[str] = field(default_factory=list)
    rounds: int = 0
    blocker: Optional[HostAnswer] = None

    def __post_init__(self):
        self.hosts = host_order(self.hosts)
        if not self.hosts:
            raise ValueError("an acquisition needs at least one host")

    def start(self) -> Step:
        self._expect(None)
        self.phase = Phase.REGISTERING
        return Step(Action.REGISTER, self.hosts)

    def registered(self, failures: Optional[Mapping[str, str]] = None) -> Step:
        """Tickets are on every host, except those in `failures` (host -> why)."""
        self._expect(Phase.REGISTERING)
        if failures:
            return self._fail("; ".join(f"{h}: {why}" for h, why in sorted(failures.items())))
        return self._begin_round()

    def answers(self, answers: Sequence[HostAnswer]) -> Step:
        """The results of the TRY on every host. All granted: DONE. Otherwise the blocker is the first
        host in the global order that refused for good (cordoned, error), else the first that refused:
        the launch waits there (giving back what it took) when it waits and may, or fails."""
        self._expect(Phase.ACQUIRING)
        by_host = {a.host: a for a in answers}
        if sorted(by_host) != list(self.hosts) or len(answers) != len(self.hosts):
            raise InvalidTransition(f"expected one answer from each of {', '.join(self.hosts)}, got "
                                    f"{', '.join(a.host for a in answers)}")
        self.taken = [h for h in self.hosts if by_host[h].outcome == Outcome.GRANTED]
        if len(self.taken) == len(self.hosts):
            self.phase = Phase.GRANTED
            return Step(Action.DONE, self.hosts)
        refusals = [by_host[h] for h in self.hosts if by_host[h].outcome != Outcome.GRANTED]
        final = [a for a in refusals if a.outcome != Outcome.REFUSED]
        self.blocker = blocker = (final or refusals)[0]
        if blocker.outcome == Outcome.REFUSED and self.wait:
            self.phase = Phase.WAITING
            return Step(Action.WAIT, (blocker.host,), release=self._give_back())
        return self._fail(f"{blocker.host}: {blocker.reason or blocker.outcome.value}")

    def ready(self, host: str) -> Step:
        """The host waited on would now grant (or its wait found a change): try every host again."""
        self._expect(Phase.WAITING)
        if self.blocker is None or host != self.blocker.host:
            raise InvalidTransition(f"waiting on {self.blocker.host if self.blocker else '?'}, not {host}")
        return self._begin_round()

    def cancel(self, reason: str = "cancelled") -> Step:
        """Stop (Ctrl-C, stop request): release what is held."""
        if self.phase in FINAL:
            raise InvalidTransition(f"already {self.phase.value}")
        self.phase = Phase.CANCELLED
        return Step(Action.FAIL, release=self._give_back(), reason=reason)

    def _begin_round(self) -> Step:
        self.phase, self.taken = Phase.ACQUIRING, []
        self.rounds += 1
        return Step(Action.TRY, self.hosts)

    def _give_back(self) -> Tuple[str, ...]:
        taken, self.taken = tuple(self.taken), []
        return taken

    def _fail(self, reason: str) -> Step:
        self.phase = Phase.FAILED
        return Step(Action.FAIL, release=self._give_back(), reason=reason)

    def _expect(self, phase: Optional[Phase]) -> None:
        if self.phase != phase:
            now = self.phase.value if self.phase else "not started"
            wanted = phase.value if phase else "not started"
            raise InvalidTransition(f"acquisition is {now}, not {wanted}")


# -- hosts that keep failing

@dataclass(frozen=True)
class BadHostSettings:
    """How long an excluded host is skipped, and when it is cordoned.

    Defaults: a first exclusion keeps new placements off the host for 10 minutes, enough for the
    restarts and queued launches that follow at once to go elsewhere, short enough that a passing
    fault (a hung collective, a flaky link) costs little; each further exclusion within the window
    doubles it, up to 6 hours, so a host that keeps failing is still retried within a working day.
    Three exclusions within 24 hours (by any jobs) is a pattern, not chance: the host is cordoned
    until a person has looked at it. `cordon_after` 0 never cordons.
    """

    cooldown_base_s: float = 600.0
    cooldown_factor: float = 2.0
    cooldown_cap_s: float = 6 * 3600.0
    cordon_after: int = 3
    window_s: float = 24 * 3600.0

    def __post_init__(self):
        if not self.cooldown_base_s >= 0:
            raise ValueError(f"cooldown_base_s must be >= 0, not {self.cooldown_base_s!r}")
        if not self.cooldown_factor >= 1:
            raise ValueError(f"cooldown_factor must be >= 1, not {self.cooldown_factor!r}")
        if not self.cooldown_cap_s >= self.cooldown_base_s:
            raise ValueError(f"cooldown_cap_s ({self.cooldown_cap_s!r}) must be >= cooldown_base_s "
                             f"({self.cooldown_base_s!r})")
        if isinstance(self.cordon_after, bool) or not isinstance(self.cordon_after, int) \
                or self.cordon_after < 0:
            raise ValueError(f"cordon_after must be an integer >= 0, not {self.cordon_after!r}")
        if not self.window_s > 0:
            raise ValueError(f"window_s must be > 0, not {self.window_s!r}")

    @classmethod
    def of(cls, sharing: Any) -> BadHostSettings:
        """The settings of a cluster file's `sharing` section (a `SharingSpec`)."""
        return cls(cooldown_base_s=sharing.cooldown_s, cooldown_factor=sharing.cooldown_factor,
                   cooldown_cap_s=sharing.cooldown_max_s, cordon_after=sharing.cordon_after,
                   window_s=sharing.window_s)


@dataclass(frozen=True)
class ExclusionRecord:
    """One exclusion of a host, as the host remembers it (times on the host's clock)."""

    time: float
    reason: str
    job: str = ""
    by: str = ""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ExclusionRecord:
        return cls(float(doc["time"]), str(doc.get("reason", "")), str(doc.get("job", "")),
                   str(doc.get("by", "")))


@dataclass(frozen=True)
class HostVerdict:
    """What the exclusion records of `host` mean at time `now`."""

    host: str
    now: float
    recent: int                      # exclusions within the window ending now
    skip_until: Optional[float]      # the cooldown's end (host clock), None when never excluded
    cordon: bool                     # to be cordoned (with `reason`)
    reason: str

    @property
    def skipped(self) -> bool:
        """Keep new placements off the host (cooling down)."""
        return self.skip_until is not None and self.now < self.skip_until

    @property
    def remaining_s(self) -> float:
        return max(0.0, self.skip_until - self.now) if self.skip_until is not None else 0.0


def cooldown_s(repeat: int, settings: BadHostSettings = BadHostSettings()) -> float:
    """The cooldown after the `repeat`-th exclusion in a row (1, 2, ...): base x factor^(repeat-1), capped."""
    if repeat < 1:
        raise ValueError("exclusions are counted from 1")
    exponent = min(repeat - 1, 1000)  # beyond any cap; keeps the power finite
    return min(settings.cooldown_cap_s, settings.cooldown_base_s * settings.cooldown_factor ** exponent)


def judge_host(host: str, records: Sequence[ExclusionRecord], now: float,
               settings: BadHostSettings = BadHostSettings()) -> HostVerdict:
    """The verdict on `host` from its exclusion records (since they were last cleared) at `now`, a
    time on the host's clock (its snapshot's `now`), so clocks of different machines never mix.

    The cooldown counts the exclusions within `window_s` before the latest one (the latest
    included); the cordon counts those within `window_s` before `now`.
    """
    if not records:
        return HostVerdict(host, now, 0, None, False, "")
    ordered = sorted(records, key=lambda r: r.time)
    last = ordered[-1]
    streak = sum(1 for r in ordered if r.time > last.time - settings.window_s)
    until = last.time + cooldown_s(streak, settings)
    recent = [r for r in ordered if now - settings.window_s < r.time <= now]
    cordon = bool(settings.cordon_after) and len(recent) >= settings.cordon_after
    what = f"job {last.job}: {last.reason}" if last.job else last.reason
    if cordon:
        reason = (f"excluded {len(recent)} times in the last {_span(settings.window_s)} "
                  f"(last: {what})")
    else:
        reason = f"excluded {streak} time{'s' if streak != 1 else ''} (last: {what})"
    return HostVerdict(host, now, len(recent), until, cordon, reason)


def _span(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"
