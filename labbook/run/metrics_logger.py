"""The Lightning logger of a labbook run: its metrics, batched into the run that :mod:`labbook.run.lifecycle`
opened. Apart from :mod:`labbook.run.recorder` so that recording runs (a sweep's parent, in a process that
trains nothing) does not import Lightning."""

from __future__ import annotations

import time
from typing import Any, Mapping

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only

from labbook.run.background import Background


class MLflowMetricsLogger(Logger):
    """A Lightning logger that writes metrics of one existing MLflow run, batched.

    Lightning's own ``MLFlowLogger`` commits to the store once per ``log_metrics`` call (one SQLite
    transaction per step) and creates runs itself; here the run belongs to :class:`TrackedRun`, and
    metrics are buffered and written with one ``log_batch`` every ``flush_every_s`` seconds and at the end.
    The periodic writes run on a background thread (:mod:`labbook.run.background`): each is ~6 ms of MLflow's
    store code, 0.1 ms a step for a 70 ms step every 5 s, which the training thread no longer waits for.
    :meth:`flush` waits for them and writes the rest; a failed write is raised by the next call.

    Every point is stored once. ``background`` may be the queue that also copies the run's checkpoints into
    the store (:class:`labbook.run.checkpoints.CheckpointUpload`): a checkpoint copied after
    :meth:`flush_async` then never reaches the store ahead of the metrics of the steps it covers. A resumed
    run passes ``stored_steps`` (each key's last stored step): the steps it trains again after the last
    checkpoint, which a stopped run may already have stored, are not stored twice. And Lightning logs some
    keys twice at one step (``epoch``, beside both the training and the validation epoch-end metrics): a
    point equal to its key's previous one is dropped.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every_s: float = 5.0,
                 background: Background | None = None, stored_steps: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self._client, self._run_id, self._flush_every_s = client, run_id, flush_every_s
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._stored = dict(stored_steps or {})
        self._previous: dict[str, tuple[int, float]] = {}  # key -> its last (step, value) taken
        self.background = background or Background("labbook-metrics")

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self._run_id

    @property
    def run_id(self) -> str:
        return self._run_id

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is recorded by :class:`TrackedRun`; model hparams are part of it."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now, step = int(time.time() * 1000), step or 0
        for key, value in metrics.items():
            value = float(value.item() if hasattr(value, "item") else value)
            if step <= self._stored.get(key, -1) or self._previous.get(key) == (step, value):
                continue
            self._previous[key] = (step, value)
            self._buffer.append(Metric(key, value, now, step))
        if time.monotonic() - self._last_flush >= self._flush_every_s:
            self.flush_async()

    def flush_async(self) -> None:
        """Hand every metric logged so far to the background queue, without waiting for the write."""
        buffer, self._buffer = self._buffer, []
        if buffer:
            self.background.submit(self._write, buffer)
        self._last_flush = time.monotonic()

    @rank_zero_only
    def flush(self) -> None:
        """Write every metric logged so far (the background writes first), before returning."""
        buffer, self._buffer = self._buffer, []
        try:
            self.background.wait()
        finally:
            self._write(buffer)
            self._last_flush = time.monotonic()

    def _write(self, buffer: list[Metric]) -> None:
        for i in range(0, len(buffer), 1000):
            self._client.log_batch(self._run_id, metrics=buffer[i : i + 1000], synchronous=True)

    @rank_zero_only
    def save(self) -> None:
        """Nothing: Lightning calls ``save()`` right after every ``log_metrics``, so flushing here made one
        SQLite commit per logging call (~8 ms each; once per epoch, every 13 steps for lstm_sunspots: +25% on
        its training time, benchmarks/overhead.py). The buffer is written every ``flush_every_s`` by
        ``log_metrics``, by ``finalize`` (end of every fit/test, and on errors), by ``labbook.train.fit`` after
        fitting and testing, and by :class:`TrackedRun` on exit."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        # The run's status is TrackedRun's business; Lightning would mark Ctrl-C as FAILED.
        self.flush()
