"""labbook's Slurm launcher: Hydra's ``submitit_slurm`` launcher, every setting and step of it kept, that waits
for every job of a sweep and returns a job that ended without a result as FAILED.

Hydra's launcher collects ``[j.results()[0] for j in jobs]``: the first job without a result (cancelled with
``scancel``, lost with its node, past its time limit more often than it may be requeued) raises there at once,
and the launching command ends while the sweep's other jobs still run. Here that job's result is a FAILED
:class:`hydra.core.utils.JobReturn` instead, whose error (:class:`labbook.sweep.parent.JobWithoutResult`) names
the job and how Slurm saw it end (``sacct``'s state, which is how submitit learns of it), said at once on
stderr; the sweep's parent run counts it (its run ended KILLED, or was left RUNNING by a lost node) and the
command exits 1.
"""

import contextlib
import sys
from typing import Any, Iterator, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher  # the module: Hydra's scan finds its class once


class LabbookSlurmLauncher(submitit_launcher.SlurmLauncher):
    """``SlurmLauncher`` whose :meth:`launch` waits for every job (see the module doc)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        with _results_or_failed():
            return super().launch(job_overrides, initial_job_idx)


@contextlib.contextmanager
def _results_or_failed() -> Iterator[None]:
    """While Hydra's ``launch`` runs (in the launching process), a submitit job's ``results()`` gives a job
    without a result as ``[FAILED JobReturn]`` rather than raising: Hydra's own loop then waits for all."""
    from submitit.core.core import Job
    from submitit.core.utils import UncompletedJobError

    original = Job.results

    def results(job: Any) -> Any:
        try:
            return original(job)
        except UncompletedJobError as exc:
            return [without_result(job, exc)]

    Job.results = results  # type: ignore[method-assign]
    try:
        yield
    finally:
        Job.results = original  # type: ignore[method-assign]


def without_result(job: Any, exc: Exception) -> JobReturn:
    """The FAILED return of a submitit ``job`` that ended without a result (``exc``: submitit's error)."""
    from labbook.sweep.parent import JobWithoutResult  # here: Hydra imports every plugin at each start

    try:
        overrides, _, number = job.submission().args[:3]  # what Hydra's launch submitted for this job
    except Exception:  # noqa: BLE001 - its submission file is gone: the job is still named by its id
        overrides, number = [], "?"
    state = (job.state or "UNKNOWN").split()[0]  # sacct says "CANCELLED by 0": the state, not who
    raised = str(exc).strip().splitlines()[-1:] if "has not produced any output" not in str(exc) else []
    how = f"failed ({state}): {raised[0]}" if raised else f"ended {state} without a result"
    error = JobWithoutResult(f"job {number} ({' '.join(overrides)}): Slurm job {job.job_id} {how}")
    print(f"labbook: {error}", file=sys.stderr, flush=True)
    returned = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
    returned.return_value = error
    return returned
