"""Each parallel job of a sweep on one machine gets its own GPUs (joblib, ``submitit_local``).

The launching process (:func:`sweep_environment`, from :class:`labbook.sweep.parent.Sweep`) takes the pool of
devices from its own ``CUDA_VISIBLE_DEVICES`` (the stated list), else every GPU torch sees, and the share of
a job from the launcher's settings: the pool split among ``hydra.launcher.n_jobs`` jobs (joblib), or
``hydra.launcher.gpus_per_node`` devices (``submitit_local``, whose own executor would give every job the
same first ones). The pool and the share travel to the jobs in the environment; the pool cut in order into
disjoint slots (:func:`slots`) is what the jobs choose from.

A job (:func:`job_devices`, before torch initialises CUDA) takes the first free slot by an ``fcntl`` lock on
a file in the sweep's directory, held for the job's life (jobs run in whichever worker is free, so a job's
number says nothing of its slot), sets ``CUDA_VISIBLE_DEVICES`` to it, and waits while every slot is taken.
A joblib worker that ran an earlier job keeps that job's devices (CUDA reads the variable once per process):
it waits for that same slot. No pool (no GPU, no stated list), another launcher: nothing changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from labbook.errors import UserError
from labbook.run.owners import ENV_CUDA_DEVICES

ENV_POOL = "LABBOOK_SWEEP_DEVICES"  # the launching process's devices, as CUDA_VISIBLE_DEVICES lists them
ENV_PER_JOB = "LABBOOK_SWEEP_DEVICES_PER_JOB"  # how many of them each job holds
SLOTS_DIR = ".labbook_devices"  # in the sweep's directory: one lock file per slot
WAIT_S = 0.5  # how often a job that found every slot taken looks again

_given: str | None = None  # the devices an earlier job of this process was given: CUDA may be bound to them


def parse_devices(text: str) -> list[str]:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value lists (indices, ``GPU-``/``MIG-`` UUIDs); ``""`` and
    ``-1`` list none. Refuses a value CUDA would silently cut short."""
    if text.strip() in ("", "-1"):
        return []
    devices = [entry.strip() for entry in text.split(",")]
    for entry in devices:
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            raise UserError(f"{ENV_CUDA_DEVICES}={text!r}: {entry!r} is not a device; expected a comma-separated "
                            "list of GPU indices or GPU-/MIG- UUIDs, such as 0,1,2,3")
    if len(set(devices)) != len(devices):
        raise UserError(f"{ENV_CUDA_DEVICES}={text!r}: a device is listed twice; expected each device once")
    return devices


def slots(pool: Sequence[str], per_job: int) -> list[str]:
    """``pool`` cut in order into disjoint slices of ``per_job`` devices, each as ``CUDA_VISIBLE_DEVICES`` writes
    it (``["0,1", "2,3"]``); devices left over are not used."""
    if per_job < 1:
        raise ValueError(f"per_job={per_job}: at least 1")
    return [",".join(pool[i:i + per_job]) for i in range(0, len(pool) - per_job + 1, per_job)]


def split(pool_size: int, concurrent: int) -> int:
    """Devices per job when ``concurrent`` jobs share ``pool_size`` devices: an equal share, at least one."""
    return max(1, pool_size // max(1, concurrent))


def device_pool(environ: Mapping[str, str] | None = None) -> list[str]:
    """The launching process's devices: its ``CUDA_VISIBLE_DEVICES`` where set, else every GPU torch sees."""
    env = os.environ if environ is None else environ
    if ENV_CUDA_DEVICES in env:
        return parse_devices(env[ENV_CUDA_DEVICES])
    if not glob.glob("/dev/nvidia[0-9]*"):  # no NVIDIA GPU here: torch's import spared
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _local_launcher(launcher: Any) -> str | None:
    """``joblib`` or ``submitit_local`` for the launchers that run several jobs at once on this machine."""
    target = str(launcher.get("_target_", ""))
    if target.endswith("JoblibLauncher"):
        return "joblib"
    return "submitit_local" if target.endswith("submitit_launcher.LocalLauncher") else None


def per_job(launcher: Any, pool_size: int) -> tuple[int, int] | None:
    """(devices per job, jobs at once) as ``hydra.launcher`` sets them; None where labbook assigns nothing
    (another launcher; ``submitit_local`` without ``gpus_per_node``, whose jobs see no GPU, or with several
    tasks per job, whose ranks share the devices submitit gives them)."""
    kind = _local_launcher(launcher)
    if kind == "joblib":
        from joblib.parallel import effective_n_jobs

        concurrent = effective_n_jobs(launcher.get("n_jobs"))
        return split(pool_size, concurrent), concurrent
    if kind == "submitit_local":
        gpus = launcher.get("gpus_per_node") or 0
        if not gpus or int(launcher.get("tasks_per_node") or 1) > 1:
            return None
        if gpus > pool_size:
            raise UserError(f"hydra.launcher.gpus_per_node={gpus}: more than the {pool_size} device(s) this "
                            f"machine has for its jobs; expected at most {pool_size} (the devices: "
                            f"{ENV_CUDA_DEVICES} of the command, else every GPU)")
        return gpus, sys.maxsize  # submitit starts every job at once
    return None


def sweep_environment(launcher: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the launching process puts in its jobs' environment for :func:`job_devices` (nothing where no
    device is assigned); says so when the jobs outnumber the slots."""
    if _local_launcher(launcher) is None:  # jobs one at a time here, or elsewhere: no pool looked for
        return {}
    pool = device_pool(environ)
    if not pool:
        return {}
    share, concurrent = per_job(launcher, len(pool)) or (0, 0)
    if not share:
        return {}
    free = slots(pool, share)
    if concurrent != sys.maxsize and concurrent > len(free):
        print(f"labbook: {concurrent} jobs at a time (hydra.launcher.n_jobs) but {len(pool)} device(s) "
              f"({','.join(pool)}): at most {len(free)} train at once, each on its own", file=sys.stderr)
    return {ENV_POOL: ",".join(pool), ENV_PER_JOB: str(share)}


def _bound() -> str | None:
    """The devices this process's CUDA is already bound to (None: free to choose; ``""``: all of them)."""
    if "torch" not in sys.modules:
        return None
    if _given is not None:  # an earlier job's: CUDA may have read them already (even an is_available())
        return _given
    import torch

    return os.environ.get(ENV_CUDA_DEVICES, "") if torch.cuda.is_initialized() else None


def _take(folder: Path, wanted: Sequence[str], choices: Sequence[str], job: str, stop: Path) -> tuple[Any, str]:
    """The first free slot in ``wanted`` (waiting while all are taken) and its lock file, held until closed;
    (None, "") once the sweep is stopping."""
    folder.mkdir(parents=True, exist_ok=True)
    said = False
    while not stop.exists():
        for devices in wanted:
            handle = open(folder / f"slot-{choices.index(devices)}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{devices} {job} pid {os.getpid()}\n")
            handle.flush()
            return handle, devices
        if not said:
            print(f"labbook: {job}: waiting for a free device slot ({' | '.join(wanted)})", file=sys.stderr,
                  flush=True)
            said = True
        time.sleep(WAIT_S)
    return None, ""


@contextlib.contextmanager
def job_devices(sweep_dir: Path, job: str, stop: Path) -> Iterator[str | None]:
    """A sweep's job on its own devices: ``CUDA_VISIBLE_DEVICES`` set to a free slot of the sweep's pool while
    inside (the devices, or None: nothing assigned, or the sweep is stopping, ``stop`` exists)."""
    global _given
    pool = os.environ.get(ENV_POOL)
    if not pool:
        yield None
        return
    choices = slots(parse_devices(pool), int(os.environ[ENV_PER_JOB]))
    bound = _bound()
    if bound is not None and bound not in choices:
        raise UserError(f"{job}: CUDA was initialised in this process (seeing {bound or 'every GPU'}) before the "
                        f"job could take its own devices (one of {' | '.join(choices)}); it would share them, so "
                        "it does not start: initialise no CUDA before the job (e.g. at a module's import)")
    handle, devices = _take(sweep_dir / SLOTS_DIR, [bound] if bound is not None else choices, choices, job, stop)
    if handle is None:
        yield None
        return
    try:
        os.environ[ENV_CUDA_DEVICES] = _given = devices
        yield devices
    finally:
        handle.close()  # the lock goes with it (with the process too, however it ends)
