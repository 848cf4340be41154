"""What every ``labbook`` command shares, written once: quiet libraries, the ``--tracking-uri`` option, and
how an error ends (:func:`run_command`).

Errors a user can fix end with one line on stderr and a non-zero exit; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import warnings
from typing import Any, Callable

TRACKING_URI_HELP = "the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)"


def quiet_libraries() -> None:
    # stdout/stderr belong to labbook's own answers and errors, not to download progress bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints "View run ... at URL" for server stores, credentials in the URL included; labbook prints
    # its own closing lines (the URI redacted).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    from labbook.store.patience import quick_http_retries

    quick_http_retries()  # an absent server is waited for by labbook.store.patience, with the user's limit
    # A store's failure reaches labbook as an exception, said in one line; these would print it again, with a
    # traceback, from MLflow's session handling and its system-metrics and batching threads.
    for name in ("mlflow.store.db.utils", "mlflow.system_metrics", "mlflow.utils.autologging_utils"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                 "lightning_fabric.utilities.rank_zero", "pytorch_lightning.accelerators.cuda",
                 "alembic", "mlflow.tracking.fluent",
                 "pytorch_lightning.trainer.connectors.checkpoint_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Advice aimed at Lightning users that labbook already acts on (exact sharded sums, worker counts).
    for message in (r".*does not have many workers.*", r".*`srun` command is available.*",
                    r".*recommended to use `self\.log\(.*sync_dist=True.*", r".*Using `DistributedSampler` with the dataloaders.*",
                    r".*isinstance\(treespec, LeafSpec\).*", r".*The number of training batches .* is smaller than the logging interval.*",
                    # EM fits without an optimizer on purpose (lightning_modules/gmm.py).
                    r".*`LightningModule.configure_optimizers` returned `None`.*"):
        warnings.filterwarnings("ignore", message=message)


_frozen = False


def freeze_imports() -> None:
    """Take what is alive now, after the big imports (torch, Lightning, MLflow: ~650,000 objects), out of the
    garbage collector's walks. Each full collection otherwise visits all of them, 0.1-0.5 s a time, several
    times while a run starts, trains and exits (the last one at exit). Once per process: a later call (the
    next job of a sweep in a reused worker) would also freeze the garbage of the job before, never to be
    freed."""
    global _frozen
    if not _frozen:
        gc.freeze()
        _frozen = True


def full_error() -> bool:
    """Whether the user asked for tracebacks (``HYDRA_FULL_ERROR=1``) instead of one-line errors."""
    return bool(os.environ.get("HYDRA_FULL_ERROR"))


def tracking_uri_option(parser: Any) -> None:
    """A subcommand's ``--tracking-uri URI``, said the same way everywhere."""
    parser.add_argument("--tracking-uri", default=None, help=TRACKING_URI_HELP)


def run_command(body: Callable[[], int | None]) -> int:
    """A subcommand's work once its arguments are parsed: the libraries quiet, ``body()`` run, and an error it
    raises ended as one line (:func:`fail`). Returns the exit code (``body``'s, 0 when it returns None)."""
    quiet_libraries()
    try:
        code = body()
    except Exception as exc:  # noqa: BLE001
        return fail(exc, full_error())
    return 0 if code is None else code


def fail(exc: BaseException, full_error: bool, prefix: str = "") -> int:
    from labbook.errors import one_line
    from labbook.redact import redact

    if full_error:
        raise exc
    line = prefix + one_line(exc)
    run_id = getattr(exc, "labbook_run_id", None)
    if run_id:
        line += f" (run {run_id} marked FAILED)"
    print(f"labbook: error: {redact(line)}", file=sys.stderr)  # a URI's password or a token is never printed
    return 1
