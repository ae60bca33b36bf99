"""Ctrl-C / SIGTERM as a flag that long work checks at safe points (a training step, a finished prepare chunk)."""

from __future__ import annotations

import signal
import threading


class StopFlag:
    """The signals ask the work to stop at its next safe point; a second SIGINT aborts at once unless told not to.
    Handlers are installed only on the main thread (signal's rule) and put back on exit. A flag rather than
    KeyboardInterrupt wherever the main thread may be inside concurrent.futures: an exception raised there can
    leave a future's lock held, and the pool's shutdown then waits forever."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM), second_sigint_aborts: bool = True):
        self.requested = False
        self._second_sigint_aborts = second_sigint_aborts
        self._signals = signals
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT and self._second_sigint_aborts:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
