"""The ``labbook`` command: a table of subcommands; each parses its own arguments and resolves its store."""

from __future__ import annotations

import sys
from typing import Callable, Sequence

from labbook.config.groups import CONF_DIR

USAGE = """\
usage: labbook COMMAND [ARGS]      (labbook --version: the version and the checkout it runs from)

commands:
  train [OVERRIDES ...]      compose conf/train.yaml with Hydra overrides, train, test, record in MLflow
                             (`labbook train --help` lists the config groups and keys;
                             `labbook train resume=RUN_ID [OVERRIDES]` continues a stored run)
  predict [--tracking-uri URI] RUN_ID [INPUT ...]
                             load a run's best checkpoint from the store and print one answer per input
                             (inputs from stdin, one per line, when none are given)
  reap [--tracking-uri URI] [--stale-after SECONDS]
                             mark FAILED the RUNNING runs whose process is gone (SIGKILL, OOM, lost host)
  compare [EXPERIMENT | PARENT_RUN_ID] [--metric M ...] [--sort [-]M] [--filter EXPR]
          [--format table|csv|json] [--tracking-uri URI]
                             a sweep's or an experiment's runs side by side: the params that differ, the
                             metrics (default: the newest run's sweep, else its experiment)
  diff [--tracking-uri URI] RUN_A RUN_B
                             what differs between two runs: config key by key, metrics, git commits
  ui [--port P] [--host H] [--tracking-uri URI]
                             MLflow's UI on this store (127.0.0.1:5000 by default); Ctrl-C stops it
  server (--backend-store-uri postgresql://... | --local-postgres DIR) [--port P] [--host H]
                             a team's tracking server: runs in PostgreSQL, artifacts served by it
  completion bash|zsh        the script that makes <TAB> complete subcommands, flags and train's overrides:
                             eval "$(labbook completion bash)" in ~/.bashrc (zsh: in ~/.zshrc)

The store: train's logger.tracking_uri or another command's --tracking-uri, else $MLFLOW_TRACKING_URI,
else sqlite:///mlflow.db in the working directory.
"""


def _train(args: Sequence[str]) -> int:
    from labbook.cli.train import train_main

    return train_main(args)


def _predict(args: Sequence[str]) -> int:
    from labbook.cli.predict import predict_main

    return predict_main(args)


def _reap(args: Sequence[str]) -> int:
    from labbook.cli.reap import reap_main

    return reap_main(args)


def _compare(args: Sequence[str]) -> int:
    from labbook.cli.compare import compare_main

    return compare_main(args)


def _diff(args: Sequence[str]) -> int:
    from labbook.cli.diff import diff_main

    return diff_main(args)


def _ui(args: Sequence[str]) -> int:
    from labbook.cli.ui import ui_main

    return ui_main(args)


def _server(args: Sequence[str]) -> int:
    from labbook.cli.server import server_main

    return server_main(args)


def _completion(args: Sequence[str]) -> int:
    from labbook.cli.completion import completion_main

    return completion_main(args)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"train": _train, "predict": _predict, "reap": _reap,
                                                        "compare": _compare, "diff": _diff, "ui": _ui,
                                                        "server": _server, "completion": _completion}


def version_line() -> str:
    """``labbook X.Y.Z from /path/to/checkout``: which code this command runs (the suite checks it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("labbook")
    except PackageNotFoundError:
        number = "(not installed)"
    return f"labbook {number} from {CONF_DIR.parent}"


def main(argv: Sequence[str] | None = None) -> int:
    from labbook.timing import mark
    from labbook.train.ranks import worker_config

    mark("main")

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
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"labbook: error: unknown command {argv[0]!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    code = command(argv[1:])
    mark("main-returned")
    return code


if __name__ == "__main__":
    sys.exit(main())
