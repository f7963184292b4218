"""Work done ahead, while the launcher waits anyway: one call run in a thread now, its result taken later.

The supervisor looks for the next attempt's resume point during the restart backoff (every process of
the failed attempt is gone, so the checkpoints on the hosts no longer change): the scans, the
verification of the chosen checkpoint and a copy to a spare then cost the restart only what outlasts
the backoff. What the call says meanwhile is kept and said when the result is taken, so the messages
keep their order and nothing is said for a result never taken (a stop during the backoff).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Generic, List, Optional, Tuple, TypeVar

T = TypeVar("T")
Say = Callable[..., None]


class Lookahead(Generic[T]):
    """`call(say)` started in a daemon thread; `take(say)` waits for it, makes the calls it made to `say`
    (same arguments, same order), and returns its result or raises its exception."""

    def __init__(self, call: Callable[[Say], T], name: str = "lookahead"):
        self._said: List[Tuple[Tuple[Any, ...], Dict[str, Any]]] = []
        self._result: Optional[T] = None
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, args=(call,), name=name, daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[Say], T]) -> None:
        try:
            self._result = call(lambda *args, **kwargs: self._said.append((args, kwargs)))
        except BaseException as exc:  # noqa: B036 - handed to the taker, whatever it is
            self._error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def take(self, say: Say) -> T:
        self._thread.join()
        for args, kwargs in self._said:
            say(*args, **kwargs)
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


__all__ = ["Lookahead"]
