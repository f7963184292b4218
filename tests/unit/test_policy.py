import pytest

from launcher.policy import Action, backoff_s, decide
from launcher.states import JobState


def test_success_and_stop_finish_the_job():
    assert decide(JobState.SUCCEEDED, restarts_used=0, max_restarts=3, stop_requested=False).job_state \
        == JobState.SUCCEEDED
    d = decide(JobState.FAILED, restarts_used=0, max_restarts=3, stop_requested=True)
    assert (d.action, d.job_state) == (Action.FINISH, JobState.STOPPED)


def test_failures_restart_until_the_limit_with_backoff():
    script = [decide(JobState.FAILED, restarts_used=n, max_restarts=2, stop_requested=False,
                     backoff_base_s=1, backoff_max_s=3) for n in range(3)]
    assert [d.action for d in script] == [Action.RESTART, Action.RESTART, Action.FINISH]
    assert [d.delay_s for d in script[:2]] == [1, 2]
    assert script[-1].job_state == JobState.FAILED and "2 of 2" in script[-1].reason


def test_backoff_is_capped_and_numbered_from_one():
    assert [backoff_s(n, 2, 10) for n in (1, 2, 3, 4)] == [2, 4, 8, 10]
    assert backoff_s(3, 1, 100, factor=3) == 9
    with pytest.raises(ValueError):
        backoff_s(0, 1, 2)


def test_zero_restarts_means_first_failure_is_final():
    d = decide(JobState.FAILED, restarts_used=0, max_restarts=0, stop_requested=False)
    assert (d.action, d.job_state) == (Action.FINISH, JobState.FAILED)


def test_bad_input_exit_is_not_restarted():
    d = decide(JobState.FAILED, restarts_used=0, max_restarts=5, stop_requested=False, exit_code=2)
    assert (d.action, d.job_state) == (Action.FINISH, JobState.FAILED) and "not restarted" in d.reason
    assert decide(JobState.FAILED, restarts_used=0, max_restarts=5, stop_requested=False,
                  exit_code=1).action == Action.RESTART
