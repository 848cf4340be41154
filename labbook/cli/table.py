"""The subcommands of ``labbook``, as a table: what ``labbook --help`` says of each, and the module that runs
it. Data only: the dispatcher (:mod:`labbook.cli.commands`) and tab completion (:mod:`labbook.cli.completion`)
both read it, and neither imports a subcommand until it is needed."""

from __future__ import annotations

USAGE = """\
usage: labbook COMMAND [ARGS]      (labbook --version: the version and the checkout it runs from)

commands:
  train [OVERRIDES ...]      compose conf/train.yaml with Hydra overrides, train, test, record in MLflow
                             (`labbook train --help` lists the config groups and keys;
                             `labbook train resume=RUN_ID [OVERRIDES]` continues a stored run)
  predict [--tracking-uri URI] RUN_ID|models:/NAME@ALIAS [INPUT ...]
                             a run's model (its best checkpoint) or a registered one: one answer per input
                             (inputs from stdin, one per line, when none are given)
  serve RUN_ID|SWEEP_PARENT_ID|models:/NAME@ALIAS [--port P] [--host H] [--tracking-uri URI]
                             a run's MLflow model over HTTP (POST /invocations; 127.0.0.1:5001 by default)
  register RUN_ID|SWEEP_PARENT_ID --name NAME [--alias ALIAS] [--tracking-uri URI]
                             a run's model (a sweep's: its best child's) as a version of a registered model
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
  new DIR                    a project of one's own in DIR: a model, a datamodule, their configs, an experiment
                             preset and a test; `labbook train experiment=NAME` and `pytest` run in it at once
  completion bash|zsh        the script that makes <TAB> complete subcommands, flags and train's overrides:
                             eval "$(labbook completion bash)" in ~/.bashrc (zsh: in ~/.zshrc)

The store: train's logger.tracking_uri or another command's --tracking-uri, else $MLFLOW_TRACKING_URI,
else sqlite:///mlflow.db in the working directory.
"""


# The subcommands: each a module of this package whose ``main(args) -> int`` parses its own arguments (and
# whose ``parser()``, where it has one, tab completion reads). Imported only when its command runs.
COMMANDS: dict[str, str] = {name: f"labbook.cli.{name}" for name in
                            ("train", "predict", "serve", "register", "reap", "compare", "diff", "ui", "server", "new", "completion")}
