"""Multi-process training: how worker ranks learn the run and the config, and how rank 0 watches them.

Lightning's DDP launcher starts ranks 1..N-1 by re-running the command line. Under Hydra that would
re-compose the config — and, in a ``-m`` sweep, re-run the whole sweep in every child. Instead, rank 0
writes its resolved config to a file and names it (and the run id) in the environment the children
inherit; :func:`worker_config` lets the CLI recognise such a child and hand it that config directly.

Lightning also watches the children it starts, and when one exits with a non-zero code it SIGKILLs the
launching process. In a sweep that process is the sweep itself: every later job is lost, the current
run stays RUNNING forever, and workers of the next job are orphaned, blocked in a collective for good.
:class:`WorkerWatch` takes that job over for labbook: a dead worker fails the current run with a message
naming the rank and its exit code, the sweep goes on, and rank 0 reaps every worker before the next job.
Workers in turn die with their parent (:func:`die_with_parent`), so none is ever left behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

ENV_CONFIG = "LABBOOK_WORKER_CONFIG"
ENV_RUN_ID = "LABBOOK_RUN_ID"
ENV_PARENT_PID = "LABBOOK_PARENT_PID"
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


class WorkerFailed(RuntimeError):
    """A worker rank exited with a non-zero code (or did not exit) while rank 0 was still relying on it."""


def is_rank_zero() -> bool:
    """True unless the environment says this process is a non-zero rank of a distributed job."""
    return all(int(os.environ.get(var, "0") or 0) == 0 for var in _RANK_VARS)


def worker_config() -> Path | None:
    """The config file handed down by rank 0, when this process is one of its DDP workers."""
    path = os.environ.get(ENV_CONFIG)
    return Path(path) if path and not is_rank_zero() else None


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when rank 0 dies, however it dies (SIGKILL, OOM killer).

    Without it a worker whose parent vanished waits in its next collective until the process group's
    timeout (30 minutes), holding the terminal's or the test's pipes open all the while.
    """
    parent = os.environ.get(ENV_PARENT_PID)
    if not sys.platform.startswith("linux") or not parent:
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent was already gone before we asked
        os._exit(1)


def _describe(rank: int, proc: subprocess.Popen, code: int | None) -> str:
    if code is None:
        return f"DDP worker rank {rank} (pid {proc.pid}) did not exit after the job ended"
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
        return f"DDP worker rank {rank} (pid {proc.pid}) {how}"
    return f"DDP worker rank {rank} (pid {proc.pid}) exited with code {code}"


class WorkerWatch:
    """Rank 0's watch over the worker processes Lightning starts for one job.

    While the job runs, a thread polls the workers. When one dies, the others are killed too: rank 0 is
    then usually blocked in a collective with the dead one, and gloo turns the closed connections into an
    exception, so the job ends FAILED through the ordinary path, with the worker's death as the reason.
    Should rank 0 not get out within ``grace_s`` (a backend that hangs instead of raising), ``on_abandon``
    records the failure (the run is marked FAILED) and the process kills itself as Lightning would: better
    than a run left RUNNING.
    """

    poll_s = 0.2

    def __init__(self, on_abandon: Callable[[str], None] | None = None, grace_s: float = 120.0) -> None:
        self.procs: list[subprocess.Popen] = []
        self.failure: str | None = None  # the first worker death that rank 0 did not cause
        self.failure_code: int | None = None  # its exit code; negative: killed by that signal
        self._on_abandon, self._grace_s = on_abandon, grace_s
        self._done = threading.Event()
        self._stopping = False

    def start(self, procs: list[subprocess.Popen]) -> None:
        self.procs = procs
        threading.Thread(target=self._watch, name="labbook-worker-watch", daemon=True).start()

    def _record_death(self) -> bool:
        """Note the first worker that has exited with a non-zero code; True once there is one."""
        if self.failure is None and not self._stopping:
            for rank, proc in enumerate(self.procs, start=1):
                code = proc.poll()
                if code not in (None, 0):
                    self.failure, self.failure_code = _describe(rank, proc, code), code
                    break
        return self.failure is not None

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            if self._record_death():
                print(f"labbook: {self.failure}; stopping the job", file=sys.stderr, flush=True)
                self.kill()
                if not self._done.wait(self._grace_s):
                    if self._on_abandon is not None:
                        self._on_abandon(f"{WorkerFailed.__name__}: {self.failure}")
                    os.kill(os.getpid(), signal.SIGKILL)
                return

    def settle(self, seconds: float) -> None:
        """After rank 0 failed: wait a moment for a worker that died first to be seen dead.

        A worker killed by a signal closes its connections, and so fails rank 0's collective, a moment
        before the kernel reports its exit status.
        """
        deadline = time.monotonic() + seconds
        while not self._record_death() and time.monotonic() < deadline:
            time.sleep(0.02)

    def expect_exit(self) -> None:
        """Rank 0 is stopping the workers itself (an interrupt, its own error): their deaths are no failure."""
        self._stopping = True

    def kill(self, signum: int = signal.SIGKILL) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def stop(self, timeout_s: float) -> str | None:
        """End the watch and reap every worker; the first failure seen, if any.

        Workers that are done exit by themselves as soon as they have returned from testing; one still
        running ``timeout_s`` later is killed and reported.
        """
        self._done.set()
        problem = self.failure
        for rank, proc in enumerate(self.procs, start=1):
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            if problem is None and not self._stopping and code != 0:
                problem = _describe(rank, proc, code)
        return problem


def _supervise(trainer: Any, watch: WorkerWatch) -> None:
    """Put ``watch`` in charge of the workers that ``trainer``'s strategy will launch (no-op otherwise)."""
    from pytorch_lightning.strategies.launchers.subprocess_script import (
        _SubprocessScriptLauncher,
    )

    strategy = trainer.strategy
    launcher = getattr(strategy, "_launcher", None)
    if type(launcher) is not _SubprocessScriptLauncher:  # one process, spawn, or an external launcher
        return

    class WatchedLauncher(_SubprocessScriptLauncher):
        """Lightning's script launcher; the workers it starts are watched by labbook, not by Lightning."""

        def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
            from lightning_fabric.utilities.distributed import (
                _set_num_threads_if_needed,
            )

            self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
            if not self.cluster_environment.creates_processes_externally:
                self._call_children_scripts()
                watch.start(self.procs)
            _set_num_threads_if_needed(num_processes=self.num_processes)
            return function(*args, **kwargs)

        def kill(self, signum: Any) -> None:
            watch.expect_exit()  # Lightning's interrupt handling (Ctrl-C, SIGTERM) stops the workers
            super().kill(signum)

        def _call_children_scripts(self) -> None:
            """Lightning's, except for the command: Lightning re-runs ``sys.argv``, which in a job that a
            launcher runs in its own worker process (joblib's loky, submitit) is that worker's command line,
            not ``labbook``. A worker only needs the environment (:data:`ENV_CONFIG` names its config)."""
            self._check_can_spawn_children()
            self.procs = []
            os.environ["MASTER_ADDR"] = self.cluster_environment.main_address
            os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)
            os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())
            os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())
            os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
            for local_rank in range(1, self.num_processes):
                env = {**os.environ, "LOCAL_RANK": str(local_rank)}
                if os.environ.get("PL_GLOBAL_SEED") is None:
                    env.pop("PL_GLOBAL_SEED", None)
                self.procs.append(subprocess.Popen(worker_command(), env=env))

    strategy._launcher = WatchedLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)


def worker_command() -> list[str]:
    """How rank 0 starts a DDP worker: the ``labbook`` entry point of this interpreter, whatever process
    rank 0 itself runs in."""
    return [sys.executable, "-m", "labbook.cli"]


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """A worker's fit and test: its process group is torn down before the interpreter exits.

    Left to interpreter shutdown, the group's C++ threads are destroyed while still joinable and the worker
    dies with SIGABRT ("terminate called without an active exception") whenever it exits before rank 0 has
    destroyed its own group: 2 sweeps in 8 here once rank 0 waited for its workers, and the cause of a CI
    run that hung.
    """
    try:
        yield
    finally:
        _destroy_process_group()


@contextlib.contextmanager
def hand_off(resolved: Mapping[str, Any], output_dir: Path, run_id: str | None, trainer: Any,
             on_abandon: Callable[[str], None] | None = None, reap_timeout_s: float = 120.0) -> Iterator[None]:
    """While fitting and testing, let worker processes find the config and the run id, and watch them.

    Afterwards reap the workers (a worker that failed raises :class:`WorkerFailed`), restore the
    environment (Lightning leaves LOCAL_RANK/WORLD_SIZE behind, which would make the next job of a sweep
    believe it was launched externally) and tear down the process group so the next job can create its own.
    """
    import yaml

    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / ".labbook_worker_config.yaml"
    path.write_text(yaml.safe_dump(dict(resolved), sort_keys=False))
    watch = WorkerWatch(on_abandon)
    _supervise(trainer, watch)
    saved = dict(os.environ)
    os.environ[ENV_CONFIG] = str(path)
    os.environ[ENV_PARENT_PID] = str(os.getpid())
    if run_id:
        os.environ[ENV_RUN_ID] = run_id
    failed: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failed = exc
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            watch.settle(seconds=1.0)
        if watch.failure is None:
            watch.expect_exit()  # rank 0 gave up first: the workers' deaths below are our doing
        watch.kill()
        raise
    finally:
        problem = watch.stop(timeout_s=10.0 if failed is not None else reap_timeout_s)
        os.environ.clear()
        os.environ.update(saved)
        _destroy_process_group()
        if problem is not None and (failed is None or _caused_by_worker(failed, watch)):
            raise WorkerFailed(problem) from failed


def _caused_by_worker(error: BaseException, watch: WorkerWatch) -> bool:
    """Whether rank 0's ``error`` is the echo of a worker's death (typically gloo's "Connection closed by peer").

    Only a death by signal (SIGKILL, the OOM killer, a crash) counts: a worker that raised an exception
    exits with code 1 after printing its own error, and then rank 0 has usually met the same error itself,
    which says more than "worker exited with code 1".
    """
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return False
    return watch.failure_code is not None and watch.failure_code < 0
