"""What a failure cost: phases that add up, the launcher's own part, steps computed again."""
import json

from launcher.recovery import WARM_WAIT, Recovery, rolled_back


def test_phases_add_up_to_the_time_from_the_failure_to_the_first_resumed_step():
    r = Recovery(2, failed_at=100.0, detected_at=100.1, gone_at=100.4, next_at=101.4, resume_at=101.6,
                 started_at=101.7, configured_at=110.0, first_step_at=115.5, steps_rolled_back=3,
                 details={"imports": 2.0}, start="warm")
    phases = dict(r.phases())
    assert list(phases) == ["detect", "teardown", "backoff", "resume point", "start", "configure",
                            "first step"]
    assert abs(sum(phases.values()) - r.total_s) < 1e-9 and abs(r.total_s - 15.5) < 1e-9
    assert abs(r.launcher_s - (0.1 + 0.3 + 0.2 + 0.1)) < 1e-9
    text = r.describe()
    assert text.startswith("15.5 s to the first resumed step (detect 0.1 s, teardown 0.3 s, backoff 1.0 s")
    assert "3 step(s) computed again" in text and "warm start" in text
    recorded = json.loads(json.dumps(r.to_dict()))
    assert abs(recorded["launcher_s"] - r.launcher_s) < 1e-9 and abs(recorded["total_s"] - 15.5) < 1e-9
    again = Recovery.from_dict(recorded)
    assert again == r


def test_unknown_bounds_leave_their_phases_open_and_clock_skew_is_never_negative():
    r = Recovery(1, failed_at=100.0, detected_at=99.5, gone_at=100.2)
    phases = dict(r.phases())
    assert phases["detect"] == 0.0 and abs(phases["teardown"] - 0.7) < 1e-9
    assert phases["backoff"] is None and r.total_s is None and r.launcher_s is None
    assert "no resumed step yet" in r.describe()


def test_steps_computed_again_count_from_the_resume_point():
    assert rolled_back((3, 2), 4, 8) == 2          # epoch 3 step 2 = global 10, resumed at 8
    assert rolled_back((3, 4), 4, 12) == 0
    assert rolled_back(None, 4, 8) is None and rolled_back((1, 1), None, 0) is None


def test_the_warm_interpreters_imports_waited_for_are_not_the_launchers_part():
    base = dict(failed_at=100.0, detected_at=100.1, gone_at=100.4, next_at=101.4, resume_at=101.6,
                started_at=103.7, configured_at=110.0, first_step_at=115.5)
    cold = Recovery(2, **base)
    warm = Recovery(2, **base, details={WARM_WAIT: 1.8}, start="warm")
    assert abs(cold.launcher_s - (0.1 + 0.3 + 0.2 + 2.1)) < 1e-9
    assert abs(warm.launcher_s - (0.1 + 0.3 + 0.2 + 0.3)) < 1e-9
    assert warm.total_s == cold.total_s and "warm imports 1.8 s" in warm.describe()
    odd = Recovery(2, **base, details={WARM_WAIT: 9.0})  # never more than the start phase it is part of
    assert abs(odd.launcher_s - (0.1 + 0.3 + 0.2)) < 1e-9
