"""The ``labbook`` command: dispatches to the subcommand named in :data:`labbook.cli.table.COMMANDS`, which
parses its own arguments and resolves its store."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from labbook.cli.table import COMMANDS, USAGE
from labbook.config.groups import CONF_DIR


def version_line() -> str:
    """``labbook X.Y.Z from /path/to/checkout``: which code this command runs (the suite checks it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("labbook")
    except PackageNotFoundError:
        number = "(not installed)"
    return f"labbook {number} from {CONF_DIR.parent}"


def main(argv: Sequence[str] | None = None) -> int:
    from labbook.config.groups import use_project
    from labbook.timing import mark
    from labbook.train.ranks import worker_config

    mark("main")
    use_project()  # a project's configs and code, for this process and every one it starts

    worker = worker_config()
    if worker is not None:
        from labbook.cli.train import worker_main

        return worker_main(worker)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version_line())
        return 0
    module = COMMANDS.get(argv[0])
    if module is None:
        print(f"labbook: error: unknown command {argv[0]!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    code = importlib.import_module(module).main(argv[1:])
    mark("main-returned")
    return code


if __name__ == "__main__":
    sys.exit(main())
