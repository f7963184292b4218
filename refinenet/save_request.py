"""The save request: "finish the current step, save a checkpoint, stop" (docs/workload-contract.md).

A launcher asks by creating the file named by `REFINENET_SAVE_REQUEST` and/or by sending SIGUSR1
to the rank processes. Standard library only, so any Python program can use it.

SIGUSR1 is blocked in the calling thread (so in every thread started after `install` that keeps its
inherited mask) and taken by a thread waiting in `sigwait`, so it interrupts no thread. Threads that
do not block it exist (numpy's OpenBLAS pool starts at `import numpy`, a library may set its own
masks): for them a handler is installed too, with SA_RESTART, so the signal is still a request and
an interrupted system call is restarted. A signal
sent before `install` kills the process by its default action unless the launcher started it with
SIGUSR1 blocked (the mask survives exec); then the signal stays pending and is taken as a request
once `install` runs.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Mapping, Optional

ENV = "REFINENET_SAVE_REQUEST"
SIGNAL = signal.SIGUSR1

_lock = threading.Lock()
_installed: Optional[SaveRequest] = None


class SaveRequest:
    """Whether this process has been asked to save and stop: SIGUSR1 taken, or the request file exists."""

    def __init__(self, path: Optional[str]):
        self.path = path or None
        self._signalled = threading.Event()

    @property
    def signalled(self) -> bool:
        return self._signalled.is_set()

    def note_signal(self) -> None:
        self._signalled.set()

    def pending(self) -> bool:
        """True once SIGUSR1 arrived or while the request file exists (one stat per call)."""
        return self._signalled.is_set() or (self.path is not None and os.path.exists(self.path))

    def consume(self) -> None:
        """Forget the request and remove its file, so a later run given the same path is not stopped."""
        self._signalled.clear()
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _wait_for_signals(request: SaveRequest) -> None:
    while True:
        signal.sigwait({SIGNAL})
        request.note_signal()


def install(environ: Mapping[str, str] = os.environ) -> SaveRequest:
    """This process's `SaveRequest` (the same one on every call): call it first thing in main, from the
    main thread, before any other thread exists, so every later thread inherits the blocked signal."""
    global _installed
    with _lock:
        if _installed is None:
            request = SaveRequest(environ.get(ENV))
            signal.signal(SIGNAL, lambda signum, frame: request.note_signal())
            signal.siginterrupt(SIGNAL, False)
            signal.pthread_sigmask(signal.SIG_BLOCK, {SIGNAL})
            threading.Thread(target=_wait_for_signals, args=(request,), name="save-request",
                             daemon=True).start()
            _installed = request
        _installed.path = environ.get(ENV) or None
        return _installed
