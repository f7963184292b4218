"""The restart policy as pure decisions: given how an attempt ended, what happens next.

Kept free of processes and I/O so it can be tested by scripting outcomes (see tests/unit/test_policy.py).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from launcher.states import JobState


class Action(str, enum.Enum):
    """What the supervisor does after an attempt."""

    FINISH = "FINISH"      # the job reached a final state
    RESTART = "RESTART"    # start another attempt after `delay_s`


@dataclass(frozen=True)
class Decision:
    action: Action
    job_state: JobState
    delay_s: float = 0.0
    reason: str = ""


def backoff_s(restart_number: int, base_s: float, max_s: float, factor: float = 2.0) -> float:
    """Delay before restart number `restart_number` (1, 2, ...): `base_s` times `factor` per earlier
    restart, capped at `max_s`."""
    if restart_number < 1:
        raise ValueError("restart numbers start at 1")
    return min(max_s, base_s * (factor ** (restart_number - 1)))


#: Exit code with which the workload reports bad input (usage, missing file): another attempt would fail
#: the same way, so it is not restarted.
BAD_INPUT_EXIT = 2


def decide(outcome: JobState, *, restarts_used: int, max_restarts: int, stop_requested: bool,
           exit_code: Optional[int] = None,
           backoff_base_s: float = 1.0, backoff_max_s: float = 30.0, backoff_factor: float = 2.0) -> Decision:
    """The next step after an attempt ended in `outcome` (SUCCEEDED, FAILED or STOPPED).

    Restarts are counted for the whole job; a stop request always wins over a restart.
    """
    if outcome == JobState.SUCCEEDED:
        return Decision(Action.FINISH, JobState.SUCCEEDED, reason="all ranks finished")
    if outcome == JobState.STOPPED or stop_requested:
        return Decision(Action.FINISH, JobState.STOPPED, reason="stop requested")
    if outcome != JobState.FAILED:
        raise ValueError(f"an attempt ends SUCCEEDED, FAILED or STOPPED, not {outcome}")
    if exit_code == BAD_INPUT_EXIT:
        return Decision(Action.FINISH, JobState.FAILED,
                        reason=f"the workload rejected its input (exit code {BAD_INPUT_EXIT}): not restarted")
    if restarts_used >= max_restarts:
        return Decision(Action.FINISH, JobState.FAILED,
                        reason=f"restart limit reached ({restarts_used} of {max_restarts} used)")
    number = restarts_used + 1
    delay = backoff_s(number, backoff_base_s, backoff_max_s, backoff_factor)
    return Decision(Action.RESTART, JobState.RESTARTING, delay, reason=f"restart {number} of {max_restarts}")
