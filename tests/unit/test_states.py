"""Job and process lifecycles: allowed transitions, final states, readable errors."""
import pytest

from launcher.states import (
    ACTIVE_STATES,
    FINAL_STATES,
    JOB_TRANSITIONS,
    RANK_TRANSITIONS,
    InvalidTransition,
    JobState,
    RankState,
    check_job_transition,
    check_rank_transition,
)


def test_groups_partition_the_job_states():
    assert ACTIVE_STATES | FINAL_STATES == set(JobState)
    assert not ACTIVE_STATES & FINAL_STATES
    assert FINAL_STATES == {JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED}


@pytest.mark.parametrize("path", [
    ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"],
    ["PENDING", "STARTING", "RUNNING", "RESTARTING", "STARTING", "RUNNING", "FAILED"],
    ["PENDING", "STARTING", "RESTARTING", "STARTING", "RUNNING", "STOPPED"],
    ["PENDING", "STOPPED"],
    ["PENDING", "FAILED"],
    ["PENDING", "STARTING", "RUNNING", "RESTARTING", "STOPPED"],
])
def test_lifecycles_allowed(path):
    state = JobState(path[0])
    for nxt in path[1:]:
        state = check_job_transition(state, nxt)
    assert state == JobState(path[-1])


@pytest.mark.parametrize("current,target", [
    ("PENDING", "RUNNING"), ("PENDING", "SUCCEEDED"), ("STARTING", "SUCCEEDED"),
    ("RESTARTING", "RUNNING"), ("RUNNING", "PENDING"), ("RUNNING", "RUNNING"),
])
def test_invalid_transitions(current, target):
    with pytest.raises(InvalidTransition):
        check_job_transition(current, target)


@pytest.mark.parametrize("final", sorted(FINAL_STATES))
def test_nothing_leaves_a_final_state(final):
    assert JOB_TRANSITIONS[final] == frozenset()
    assert final.is_final
    for target in JobState:
        with pytest.raises(InvalidTransition):
            check_job_transition(final, target)


def test_error_names_the_job_and_the_allowed_states():
    with pytest.raises(InvalidTransition) as err:
        check_job_transition(JobState.PENDING, JobState.RUNNING, what="job demo-r1")
    msg = str(err.value)
    assert "job demo-r1" in msg and "PENDING to RUNNING" in msg
    assert "FAILED, STARTING, STOPPED" in msg
    with pytest.raises(InvalidTransition, match=r"nothing \(final state\)"):
        check_job_transition("SUCCEEDED", "RUNNING")


def test_unknown_state_name_is_rejected():
    with pytest.raises(ValueError):
        check_job_transition("PENDING", "DONE")


def test_rank_lifecycle():
    state = RankState.PENDING
    for nxt in ("STARTING", "RUNNING", "FAILED"):
        state = check_rank_transition(state, nxt)
    assert state.is_final and not RankState.RUNNING.is_final
    assert check_rank_transition("STARTING", "STOPPED") == RankState.STOPPED
    with pytest.raises(InvalidTransition, match="r3 on host-b: cannot go from SUCCEEDED to RUNNING"):
        check_rank_transition("SUCCEEDED", "RUNNING", what="r3 on host-b")
    assert all(RANK_TRANSITIONS[s] == frozenset() for s in RankState if s.is_final)


def test_states_are_plain_strings_in_json():
    import json
    assert json.dumps({"s": JobState.RUNNING}) == '{"s": "RUNNING"}'
    assert str(RankState.STOPPED) == "STOPPED"
