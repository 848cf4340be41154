"""``labbook reap [--tracking-uri URI] [--stale-after SECONDS]``: fail the runs whose owner is gone."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from labbook.cli.console import run_command, tracking_uri_option
from labbook.run.owners import STALE_AFTER_S


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook reap",
        description="Mark FAILED every RUNNING run whose owner is gone: on this host, a process that no longer "
                    "exists (SIGKILL, the OOM killer); on another host, no heartbeat for --stale-after seconds.")
    tracking_uri_option(p)
    p.add_argument("--stale-after", type=float, default=STALE_AFTER_S, metavar="SECONDS",
                   help=f"a run on another host is dead after this long without a heartbeat (default {STALE_AFTER_S:g})")
    return p


def main(args: Sequence[str]) -> int:
    arguments = parser()
    options = arguments.parse_args(list(args))
    if options.stale_after <= 0:
        arguments.error(f"--stale-after={options.stale_after:g} is not allowed: expected a number of seconds > 0")

    def reap_store() -> None:
        from labbook.run.owners import reap
        from labbook.store.uri import resolve_tracking_uri

        uri = resolve_tracking_uri(options.tracking_uri)
        reaped = reap(uri, stale_after_s=options.stale_after)  # a missing store: one line, from the read side
        for run_id, why in reaped:
            print(f"{run_id} FAILED: {why}")
        print(f"{len(reaped)} run(s) reaped in {uri}", file=sys.stderr)

    return run_command(reap_store)
