"""``labbook register RUN | SWEEP_PARENT | models:/… --name NAME [--alias ALIAS]``: a run's MLflow model into
the model registry.

A run registers its best logged model (:mod:`labbook.run.model`); a sweep's or a search's parent run its best
child's, by the one rule for "best" (the child its summary names). The new version points at the logged model,
so ``labbook predict models:/NAME@ALIAS …`` and ``labbook serve models:/NAME@ALIAS`` answer with it. Something
without a model is one line, and no registered model is created for it.
"""

from __future__ import annotations

import argparse
import re
from typing import Sequence

from labbook.cli.console import run_command, tracking_uri_option

# MLflow's registry takes most names; an alias is letters, digits, _ and - (and not "latest" or v<number>).
ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="labbook register",
        description="Register a run's MLflow model (a sweep's or search's parent: its best child's) as a new "
                    "version of a registered model.")
    p.add_argument("what", metavar="RUN_ID|SWEEP_PARENT_ID|models:/…",
                   help="a run id or an unambiguous prefix, a sweep's parent run, or a model URI")
    p.add_argument("--name", required=True, help="the registered model (created when new)")
    p.add_argument("--alias", help="an alias for the new version (e.g. champion): models:/NAME@ALIAS")
    tracking_uri_option(p)
    return p


def main(args: Sequence[str]) -> int:
    arguments = parser()
    options = arguments.parse_args(list(args))
    if not options.name.strip():
        arguments.error("--name is blank: expected a registered model's name")
    if options.alias is not None and (not ALIAS.match(options.alias) or options.alias == "latest"
                                      or re.fullmatch(r"[vV]\d+", options.alias)):
        arguments.error(f"--alias={options.alias!r} is not allowed: expected letters, digits, _ and - (not "
                        "'latest' nor v<number>, which MLflow reserves)")

    def register() -> None:
        from labbook.store.models import register
        from labbook.store.read import open_reader
        from labbook.store.uri import resolve_tracking_uri

        uri = resolve_tracking_uri(options.tracking_uri)
        ref, version = register(uri, open_reader(uri), options.what, options.name, options.alias)
        at = f"@{options.alias}" if options.alias else f"/{version}"
        print(f"registered {options.name} version {version} from {ref.described} ({ref.uri})")
        print(f"use it: labbook predict models:/{options.name}{at} INPUT…   labbook serve models:/{options.name}{at}")

    return run_command(register)
