"""Work done ahead: its result and its messages come when taken, in order; its failure is raised then."""
import threading

import pytest

from launcher.lookahead import Lookahead


def test_the_result_and_the_messages_come_when_taken():
    go = threading.Event()

    def call(say):
        say("first")
        say("second", note=True)
        go.wait(5)
        return 42

    ahead = Lookahead(call)
    said = []
    assert not ahead.done
    go.set()
    assert ahead.take(lambda text, note=False: said.append((text, note))) == 42
    assert ahead.done and said == [("first", False), ("second", True)]


def test_a_failure_is_raised_by_take_after_the_messages():
    def call(say):
        say("looking")
        raise KeyError("gone")

    ahead = Lookahead(call)
    said = []
    with pytest.raises(KeyError, match="gone"):
        ahead.take(said.append)
    assert said == ["looking"]


def test_nothing_is_said_for_a_result_never_taken():
    said = []
    ahead = Lookahead(lambda say: say("never shown"))
    ahead._thread.join(5)
    assert ahead.done and said == []
