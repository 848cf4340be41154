"""A run's life: open it (new, as a sweep's child, or re-opened to resume), say who owns it while it
runs (:mod:`labbook.run.owners`), and close it with the status that matches what happened.

Statuses: ``FINISHED`` on a normal exit; ``FAILED`` on an exception (the message in tag ``error``);
``KILLED`` on SIGINT/SIGTERM (exit code 130/143), and on the signal with which a cluster launcher (submitit's
``USR2``) warns of a time limit or a preemption: then the job is requeued, and its next allocation continues
the run (:mod:`labbook.train.requeue`). A process that cannot say anything (SIGKILL, the
out-of-memory killer, a lost machine) leaves its run RUNNING, for :func:`labbook.run.owners.reap`.
"""

from __future__ import annotations

import shlex
import signal
import socket
import sys
import threading
import time
from typing import Any, Mapping

from mlflow.tracking import MlflowClient

from labbook import names
from labbook.config.schemas import MLflowConfig
from labbook.errors import RunInterrupted, RunKilled
from labbook.redact import redact, redact_tree
from labbook.run.owners import device_tags, owner_tags, scheduler_tags
from labbook.run.recorder import Recorder, _user, ensure_experiment, patient_client

# After SIGINT/SIGTERM a training run stops at its next batch boundary, with a checkpoint of the state it
# reached; one that does not get there within this many seconds (a long validation, a slow first batch)
# is interrupted where it is, so that the run is KILLED within 10 s whatever it was doing.
STOP_GRACE_S = 6.0


def requeue_signal() -> int | None:
    """The signal with which this job's launcher warns of a time limit or a preemption and then requeues the
    job, when a launcher set one up in this process (submitit: ``USR2``, or ``$SUBMITIT_PREEMPT_SIGNAL``, sent
    ``hydra.launcher.signal_delay_s`` before the limit); None otherwise."""
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        owner = getattr(signal.getsignal(signum), "__self__", None)
        if type(owner).__module__.startswith("submitit."):
            return signum
    return None


class _Heartbeat(threading.Thread):
    """Rewrites the run's ``heartbeat`` tag every ``every_s`` seconds until stopped."""

    def __init__(self, client: MlflowClient, run_id: str, every_s: float) -> None:
        super().__init__(name="labbook-heartbeat", daemon=True)
        self._client, self._run_id, self._every_s = client, run_id, every_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._every_s):
            try:
                self._client.set_tag(self._run_id, names.HEARTBEAT, str(int(time.time())))
            except Exception:  # noqa: BLE001 - a busy store skips a beat; the next one will do
                pass

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


# ---------------------------------------------------------------------------------------------- run
class TrackedRun(Recorder):
    """An open MLflow run owned by this process; closing it sets the status that happened.

    Use as a context manager: ``FINISHED`` on a normal exit, ``KILLED`` when SIGINT/SIGTERM arrived,
    ``FAILED`` (with the error in the ``error`` tag) on any other exception.
    """

    def __init__(self, uri: str, run_id: str, heartbeat_s: float = MLflowConfig.heartbeat_s,
                 patience_s: float | None = None) -> None:
        # Every call this run makes waits out a tracking server that is briefly away (labbook.store.patience).
        super().__init__(patient_client(uri, patience_s), run_id, uri)
        self.signal_received: int | None = None
        self._stop_requested: Any = None  # set while training: asks the trainer to stop at a batch boundary
        self._grace_s = STOP_GRACE_S
        self._previous_handlers: dict[int, Any] = {}
        self._requeue_signum: int | None = None  # the launcher's time-limit signal (requeue_signal), once claimed
        self._heartbeat_s = heartbeat_s
        self._heartbeat: _Heartbeat | None = None
        self._system: Any = None  # MLflow's SystemMetricsMonitor, when monitor_system() started one

    @classmethod
    def start(cls, uri: str, experiment_name: str, run_name: str | None = None,
              tags: Mapping[str, str] | None = None, parent_run_id: str | None = None,
              heartbeat_s: float = MLflowConfig.heartbeat_s, patience_s: float | None = None) -> "TrackedRun":
        """Open a new run in ``experiment_name`` (a child of ``parent_run_id`` when given)."""
        client = patient_client(uri, patience_s)
        exp_id = ensure_experiment(client, experiment_name, uri)
        all_tags = {
            names.USER: _user(),
            names.SOURCE_NAME: "labbook train",
            names.SOURCE_TYPE: "LOCAL",
            names.HOST: socket.gethostname(),
            names.COMMAND: shlex.join(["labbook", "train", *redact_tree(sys.argv[1:])]),  # each word, before quoting
            **owner_tags(),
            **scheduler_tags(),
            **device_tags(),
            **(tags or {}),
        }
        if parent_run_id:
            all_tags[names.PARENT_RUN] = parent_run_id
        run = client.create_run(exp_id, run_name=redact(run_name) if run_name else run_name,
                                tags={k: redact(str(v)) for k, v in all_tags.items()})  # argv may hold a password
        return cls(uri, run.info.run_id, heartbeat_s, patience_s)

    @classmethod
    def reopen(cls, uri: str, run_id: str, heartbeat_s: float = MLflowConfig.heartbeat_s,
               patience_s: float | None = None) -> "TrackedRun":
        """Re-open an ended run (to resume it): RUNNING again, owned by this process."""
        tracked = cls(uri, run_id, heartbeat_s, patience_s)
        tracked.running_again()
        tracked.set_tags({**owner_tags(), **scheduler_tags(), **device_tags()})  # a requeued job: its new allocation
        return tracked

    def __enter__(self) -> "TrackedRun":
        self.claim_signals()
        if self._heartbeat_s > 0:
            self._heartbeat = _Heartbeat(self.client, self.run_id, self._heartbeat_s)
            self._heartbeat.start()
        return self

    def monitor_system(self, every_s: float, resume: bool = False) -> None:
        """Record MLflow's system metrics (CPU, memory, GPU where there is one) every ``every_s`` seconds until
        the run ends; a resumed run's continue their steps after the stored ones."""
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start/stop chatter
        self._system = SystemMetricsMonitor(self.run_id, sampling_interval=every_s, resume_logging=resume,
                                            tracking_uri=self.uri)
        self._system.start()

    def claim_signals(self) -> None:
        """(Re)install the SIGINT/SIGTERM handlers that end the run KILLED.

        Lightning installs its own SIGTERM handler at the start of every stage (see
        :class:`labbook.train.callbacks.StopOnSignal`, which calls this again right after).
        """
        if self._requeue_signum is None:
            self._requeue_signum = requeue_signal()
        for signum in (signal.SIGINT, signal.SIGTERM, *([self._requeue_signum] if self._requeue_signum else [])):
            try:
                previous = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread: the caller owns signal handling
                continue
            self._previous_handlers.setdefault(signum, previous)

    def defer_signals(self, stop_requested: Any, grace_s: float = STOP_GRACE_S) -> None:
        """While training (``stop_requested`` a callable; None to end it), SIGINT/SIGTERM does not interrupt
        the process wherever it is but calls ``stop_requested()``, so training stops at its next batch
        boundary with a checkpoint (:class:`labbook.train.callbacks.StopOnSignal`); a second signal, or
        ``grace_s`` (:data:`STOP_GRACE_S`) seconds without reaching one, interrupts it anyway."""
        self._stop_requested, self._grace_s = stop_requested, grace_s
        if stop_requested is not None and self._warned():  # the launcher's warning came before training did
            stop_requested()

    def stopping(self) -> None:
        """The trainer reached its stopping point: no interruption may cut its last checkpoint short."""
        if signal.SIGALRM in self._previous_handlers:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signal_received is None:
            self.signal_received = signum
            if self._stop_requested is not None:
                try:
                    self._stop_requested()
                except Exception as exc:  # noqa: BLE001 - raised here it could be caught as the job's error
                    raise RunInterrupted(f"received {signal.Signals(signum).name} ({exc})") from None
                self._previous_handlers.setdefault(signal.SIGALRM, signal.signal(signal.SIGALRM, self._on_grace_over))
                signal.setitimer(signal.ITIMER_REAL, self._grace_s)
                return
            if self._warned():  # minutes before the limit: training, once it starts, stops at its first batch
                return
        raise RunInterrupted(f"received {signal.Signals(signum).name}")

    def _warned(self) -> bool:
        """Whether the signal received is the launcher's time-limit (or preemption) warning."""
        return self.signal_received is not None and self.signal_received == self._requeue_signum

    def _hand_over_to_launcher(self) -> None:
        """After the launcher's time-limit (or preemption) signal, with the run's checkpoint in the store: the
        run ends KILLED saying so, and the launcher's own handler requeues the job and exits this process
        (submitit: the job's ``checkpoint()``, ``scontrol requeue``, exit). Its next allocation continues
        this run (:mod:`labbook.train.requeue`). Returns only when the launcher would not requeue the job."""
        name = signal.Signals(self.signal_received).name
        self.end("KILLED", f"stopped by {name} (its Slurm job's time limit or a preemption): requeued, its "
                 "next allocation continues this run")
        try:
            self._previous_handlers[self.signal_received](self.signal_received, None)
        except Exception as exc:  # noqa: BLE001 - submitit's "not requeued: timed out too many times"
            self.set_tags({names.ERROR: f"stopped by {name}; not requeued: {exc}"})

    def _on_grace_over(self, signum: int, frame: Any) -> None:
        raise RunInterrupted(f"not stopped within {self._grace_s:g} s of the signal")

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> bool:
        self._stop_requested = None
        self.stopping()
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._system is not None:
            self._system.finish()  # its last samples, before the run's status changes
        if getattr(self.client, "gave_up", False):  # the server is away: nothing more can be written
            return False
        if self.logger is not None:
            try:
                self.logger.flush()
            except Exception:  # noqa: BLE001 - the status below matters more than late metrics
                pass
        if self._warned():
            if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
                self.signal_received = None  # warned after training, and done all the same: nothing to requeue
            else:
                self._hand_over_to_launcher()
        if self.signal_received is not None:
            name = signal.Signals(self.signal_received).name
            try:
                self.end("KILLED", f"interrupted by {name}")
            finally:  # even when the store refused the status: a signalled process stops (a sweep with it)
                # The shell convention for death by signal, whatever Lightning turned the signal into.
                raise RunKilled(128 + self.signal_received, self.run_id, name) from None
        if exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None)):
            self.end("FINISHED")
        else:
            self.end("FAILED", f"{type(exc).__name__}: {exc}")
            try:
                exc.labbook_run_id = self.run_id  # type: ignore[union-attr]  # named in the CLI's error line
            except AttributeError:
                pass
        return False

