"""Store writes that a training step need not wait for, done on one background thread.

A metrics flush (~6 ms of MLflow's SQLAlchemy store: a few queries and commits) every
``logger.flush_every_s`` and the copy of a freshly written checkpoint into the run's artifacts (~3-10 ms
for a 1-2 MB model) cost the training thread nothing when another thread does them: the training thread
spends most of a step in torch's kernels, which release the GIL. Work runs in the order submitted; whoever
needs it done (the end of training, a rewrite of the file being copied) waits for it. While they run, the
training thread must get the GIL back quickly: see :data:`SWITCH_INTERVAL_S`.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

# How long a thread holding the GIL keeps it once another thread asks for it. Python's default, 5 ms, is
# tuned for throughput: the training thread, back from a torch kernel, waited up to 5 ms for every hand-over
# while a background thread ran MLflow's Python (the Transformer's last.ckpt took its thread 17 ms instead of
# 6.4, its per-step cost in benchmarks/overhead.py 0.099 ms instead of 0.043). Only contended hand-overs come
# sooner; a single thread is never interrupted.
SWITCH_INTERVAL_S = 0.0005


class Background:
    """One worker thread, started on first use. ``cpu_s``: the CPU seconds its work took (what
    ``benchmarks/overhead.py`` reports as labbook's time off the training thread)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.cpu_s = 0.0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` after what was submitted before. The exception of a failed call is raised
        by the next :meth:`submit` or :meth:`wait`."""
        self.raise_failed()
        if self._executor is None:  # a non-daemon thread: the interpreter finishes its queue before exiting
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        future = self._executor.submit(self._timed, fn, *args)
        with self._lock:
            self._pending.append(future)

    def _timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.thread_time()
        try:
            return fn(*args)
        finally:
            self.cpu_s += time.thread_time() - started

    def raise_failed(self) -> None:
        """Forget the finished work; raise the first failure among it."""
        with self._lock:
            done: list[Future] = []
            running: list[Future] = []
            for future in self._pending:  # one look at each: one finishing meanwhile is checked next time
                (done if future.done() else running).append(future)
            self._pending = running
        for future in done:
            future.result()

    def wait(self) -> None:
        """Until everything submitted has run; raises the first failure."""
        with self._lock:
            todo = list(self._pending)
        for future in todo:
            future.exception()  # blocks until it has run
        self.raise_failed()
