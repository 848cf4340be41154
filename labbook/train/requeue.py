"""A job that comes back continues its run, rather than opening a second one.

Slurm: after a time limit or a preemption Slurm requeues the job (the same job id, ``SLURM_RESTART_COUNT`` one
higher), and its next allocation runs the same configuration again. torchrun: an agent started with
``--max-restarts`` restarts every worker of the launch when one of them fails (a new attempt of the same
command line).

Instead of a second run, rank 0 finds the run that the job's earlier attempt opened (tagged with the job,
:func:`labbook.run.owners.scheduler_tags`) and resumes it from its newest stored checkpoint, exactly as
``resume=RUN_ID`` would. The earlier attempt either ended the run itself (the launcher's time-limit signal:
:meth:`labbook.run.lifecycle.TrackedRun._hand_over_to_launcher`; SIGTERM from ``scontrol requeue`` or from a
torchrun agent stopping its workers; a peer's death) or was killed before it could (then
:func:`labbook.run.owners.reap` fails it first: that attempt is over, :func:`labbook.run.owners.earlier_attempt`).
The other ranks (:func:`rank_checkpoint`) take the same checkpoint from the same store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from labbook import names


def _job_key(mine: dict[str, str], in_sweep: bool) -> str | None:
    """The tag that names this process's job when the job has come back; None on a first attempt (Slurm), or
    outside a scheduler. A torchrun launch's attempts are told apart by time (:func:`earlier_attempt`), and
    within a sweep under torchrun (every job one launch) not at all."""
    if names.SLURM_JOB in mine:
        return names.SLURM_JOB if mine[names.SLURM_REQUEUES] != "0" else None
    return names.TORCHRUN_JOB if names.TORCHRUN_JOB in mine and not in_sweep else None


def earlier_run(uri: str, sweep_job: Any = None) -> Any:
    """The run (a :class:`labbook.store.read.RunRecord`) that an earlier attempt of the job running this
    process opened, newest first; None outside Slurm and torchrun, on a job's first attempt, or when that
    attempt never opened one. In a sweep, only a child of the sweep's parent counts."""
    from labbook.run.owners import earlier_attempt, scheduler_tags
    from labbook.store.read import search_runs

    mine = scheduler_tags()
    key = _job_key(mine, in_sweep=sweep_job is not None)
    if key is None:
        return None
    found = search_runs(uri, None, parent_run_id=sweep_job.parent_run_id if sweep_job else None,
                        tags={key: mine[key]})
    return next((run for run in found if earlier_attempt(run.tags)), None)


def continue_note(run: Any) -> str:
    """The line a job that came back prints before it continues its run."""
    job = run.tags.get(names.SLURM_JOB) or run.tags.get(names.TORCHRUN_JOB) or "?"
    return (f"labbook: job {job} came back (a Slurm requeue, a torchrun restart); continuing its run {run.run_id} "
            f"(it ended {run.status}) from its newest checkpoint")


def rank_checkpoint(uri: str, checkpoint_dir: Any) -> Any:
    """For a rank other than 0 that the cluster started (Slurm tasks, torchrun workers), in a job that came
    back: the checkpoint rank 0 continues from, as a local file (None: the job trains afresh; False: its run had
    FINISHED, nothing is left to train).

    Every rank decides from the same store before any of them trains (rank 0 stores nothing new before its
    peers join it): the newest run of this job's attempts, which rank 0 either continues (it has a last
    checkpoint) or replaces with a new one (it has none)."""
    from labbook.run.owners import agent_started, scheduler_tags
    from labbook.store.models import stored_checkpoint
    from labbook.store.read import open_reader, search_runs
    from labbook.sweep.job import ENV_PARENT
    from labbook.train.resume import localise_checkpoint

    mine = scheduler_tags()
    parent = os.environ.get(ENV_PARENT) or None
    key = _job_key(mine, in_sweep=parent is not None)
    if key is None:
        return None
    found = search_runs(uri, None, parent_run_id=parent, tags={key: mine[key]})
    if key == names.TORCHRUN_JOB:  # this launch's runs only: opened after its agents started
        started = agent_started()
        found = [run for run in found if started is not None and run.start_time >= int(started) * 1000]
    if not found:
        return None
    if found[0].status == "FINISHED":
        return False
    checkpoint_dir = Path(checkpoint_dir)
    own = checkpoint_dir / f".rank{os.environ.get('SLURM_PROCID', os.environ.get('RANK', ''))}"  # never over rank 0's
    last = stored_checkpoint(open_reader(uri), found[0], "last", own / ".download")
    return None if last is None else localise_checkpoint(last, checkpoint_dir, own / Path(names.LAST_CHECKPOINT).name)
