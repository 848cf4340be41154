"""A Slurm job that comes back continues its run: after a time limit or a preemption Slurm requeues the job (the
same job id, ``SLURM_RESTART_COUNT`` one higher), and its next allocation runs the same configuration again.

Instead of a second run, the job finds the run that its earlier allocation opened (tagged with the job's id,
:func:`labbook.run.owners.scheduler_tags`) and resumes it from its newest stored checkpoint, exactly as
``resume=RUN_ID`` would. The earlier allocation either ended the run itself (the launcher's time-limit signal:
:meth:`labbook.run.lifecycle.TrackedRun._hand_over_to_launcher`; SIGTERM from ``scontrol requeue``) or was
killed before it could (then :func:`labbook.run.owners.reap` fails it first: that allocation is over).
"""

from __future__ import annotations

from typing import Any

from labbook import names


def earlier_run(uri: str, sweep_job: Any = None) -> Any:
    """The run (a :class:`labbook.store.read.RunRecord`) that an earlier allocation of this requeued Slurm job
    opened, newest first; None outside Slurm, on a job's first allocation, or when that allocation never
    opened one. In a sweep, only a child of the sweep's parent counts."""
    from labbook.run.owners import earlier_allocation, scheduler_tags
    from labbook.store.read import search_runs

    mine = scheduler_tags()
    if not mine or mine[names.SLURM_REQUEUES] == "0":
        return None
    found = search_runs(uri, None, parent_run_id=sweep_job.parent_run_id if sweep_job else None,
                        tags={names.SLURM_JOB: mine[names.SLURM_JOB]})
    return next((run for run in found if earlier_allocation(run.tags)), None)


def continue_note(run: Any) -> str:
    """The line a requeued job prints before it continues its run."""
    mine_job = run.tags.get(names.SLURM_JOB, "?")
    return (f"labbook: Slurm job {mine_job} was requeued; continuing its run {run.run_id} (it ended {run.status}) "
            "from its newest checkpoint")


def rank_checkpoint(uri: str, checkpoint_dir: Any) -> Any:
    """For a rank other than 0 that Slurm started (a job of several tasks), in a requeued job: the checkpoint
    rank 0 continues from, as a local file (None: the job trains afresh; False: its run had FINISHED, nothing
    is left to train).

    Every rank decides from the same store before any of them trains (rank 0 stores nothing new before its
    peers join it): the newest run of this job, which rank 0 either continues (it has a last checkpoint) or
    replaces with a new one (it has none)."""
    import os
    from pathlib import Path

    from labbook.run.owners import scheduler_tags
    from labbook.store.models import stored_checkpoint
    from labbook.store.read import open_reader, search_runs
    from labbook.sweep.job import ENV_PARENT
    from labbook.train.resume import localise_checkpoint

    mine = scheduler_tags()
    if not mine or mine[names.SLURM_REQUEUES] == "0":
        return None
    found = search_runs(uri, None, parent_run_id=os.environ.get(ENV_PARENT) or None,
                        tags={names.SLURM_JOB: mine[names.SLURM_JOB]})
    if not found:
        return None
    if found[0].status == "FINISHED":
        return False
    checkpoint_dir = Path(checkpoint_dir)
    own = checkpoint_dir / f".rank{os.environ.get('SLURM_PROCID', '')}"  # beside rank 0's, never over it
    last = stored_checkpoint(open_reader(uri), found[0], "last", own / ".download")
    return None if last is None else localise_checkpoint(last, checkpoint_dir, own / Path(names.LAST_CHECKPOINT).name)
