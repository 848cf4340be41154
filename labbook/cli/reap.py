"""``labbook reap [--tracking-uri URI] [--stale-after SECONDS]``: fail the runs whose owner is gone."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

# Here, not in labbook.run.owners (which uses it as its default): this module's import stays light, for tab
# completion (labbook.cli.completion reads parser()), while the lifecycle's pulls in MLflow.
STALE_AFTER_S = 300.0  # a run on another host is dead after this long without a heartbeat


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook reap",
        description="Mark FAILED every RUNNING run whose owner is gone: on this host, a process that no longer "
                    "exists (SIGKILL, the OOM killer); on another host, no heartbeat for --stale-after seconds.")
    p.add_argument("--tracking-uri", default=None,
                   help="the store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    p.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                   help=f"a run on another host is dead after this long without a heartbeat (default {STALE_AFTER_S:g})")
    return p


def reap_main(args: Sequence[str]) -> int:
    from labbook.cli.console import fail, quiet_libraries

    arguments = parser()
    options = arguments.parse_args(list(args))
    if options.stale_after <= 0:
        arguments.error(f"--stale-after={options.stale_after:g} is not allowed: expected a number of seconds > 0")
    quiet_libraries()
    full_error = bool(os.environ.get("HYDRA_FULL_ERROR"))
    try:
        from mlflow.tracking import MlflowClient

        from labbook.run.owners import reap
        from labbook.store.uri import existing_sqlite_store, resolve_tracking_uri

        uri = resolve_tracking_uri(options.tracking_uri)
        existing_sqlite_store(uri)
        reaped = reap(MlflowClient(tracking_uri=uri), stale_after_s=options.stale_after)
    except Exception as exc:  # noqa: BLE001
        return fail(exc, full_error)
    for run_id, why in reaped:
        print(f"{run_id} FAILED: {why}")
    print(f"{len(reaped)} run(s) reaped in {uri}", file=sys.stderr)
    return 0
