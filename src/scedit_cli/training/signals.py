"""Ctrl-C / SIGTERM during training: checkpoint after the current step, then stop."""

from __future__ import annotations

import signal
import threading


class StopFlag:
    """SIGINT / SIGTERM ask the loop to checkpoint and stop after the current step; a second SIGINT aborts.
    Handlers are installed only on the main thread (signal's rule) and put back on exit."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
