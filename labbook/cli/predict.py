"""``labbook predict RUN_ID [INPUT ...]``: answer inputs with a stored run's best checkpoint.

The run's stored config rebuilds the datamodule (for its input parsing and output formatting) and names
the model class; the checkpoint holds the weights and everything the model learnt about the data.
Answers go to stdout, one line per input and nothing else; errors are one line on stderr.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Sequence

from labbook import names
from labbook.config.contract import data_traits, model_traits
from labbook.errors import UserError

# Read by hand in main (an input may itself start with "-"); tab completion offers FLAGS.
URI_FLAG = "--tracking-uri"
FLAGS = (URI_FLAG, "-h", "--help")

USAGE = """\
usage: labbook predict [--tracking-uri URI] RUN_ID [INPUT ...]
  Inputs come from stdin, one per line, when none are given. The store is URI, else $MLFLOW_TRACKING_URI,
  else sqlite:///mlflow.db in the working directory."""
def load_run(run_id: str, uri: str, workdir: Path) -> tuple[dict, Path]:
    """The run's resolved config and a local copy of its best (else last) checkpoint."""
    from labbook.store.read import open_reader

    reader = open_reader(uri)
    run = reader.find_run(run_id)
    return reader.config(run), reader.checkpoint(run, (names.BEST_CHECKPOINT, names.LAST_CHECKPOINT), workdir, why=(
        ": was it trained with logger.log_checkpoints=false, or did it fail before one was saved?"))


def predict(run_id: str, inputs: Sequence[str], uri: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        config, ckpt = load_run(run_id, uri, Path(tmp))
        # Only now torch (~1.5 s): a mistyped run id or store is answered without it.
        import torch
        from hydra.utils import get_class, instantiate
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(config)
        model_cls = get_class(cfg.model._target_)
        model = model_cls.load_from_checkpoint(str(ckpt), map_location="cpu")
    datamodule = instantiate(cfg.datamodule)
    data = data_traits(datamodule)
    if not (data.parses_inputs and data.formats_outputs and model_traits(model).predicts):
        raise UserError(f"{cfg.datamodule._target_} or {cfg.model._target_} does not support predict "
                        "(needs datamodule.parse_inputs/format_outputs and model.predict)")
    try:
        x = datamodule.parse_inputs(list(inputs))
    except ValueError as exc:
        raise UserError(f"input: {exc}") from exc
    model.eval()
    with torch.no_grad():
        y = model.predict(x)
    return list(datamodule.format_outputs(y))


def main(args: Sequence[str]) -> int:
    from labbook.cli.console import run_command
    from labbook.store.uri import resolve_tracking_uri

    args = list(args)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    explicit_uri = None
    if args[0] == URI_FLAG or args[0].startswith(URI_FLAG + "="):
        name, _, explicit_uri = args.pop(0).partition("=")
        if not explicit_uri:
            explicit_uri = args.pop(0) if args else ""
        if not explicit_uri:
            print("labbook: error: --tracking-uri needs a URI (sqlite:///path.db, http://host:5000, ...)",
                  file=sys.stderr)
            return 2
    if not args:
        print(f"labbook: error: no RUN_ID given\n{USAGE}", file=sys.stderr)
        return 2
    run_id, inputs = args[0], list(args[1:])
    if not inputs:
        inputs = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not inputs:
        print("labbook: error: no inputs: give them as arguments or on stdin, one per line", file=sys.stderr)
        return 2

    def answer() -> None:
        answers = predict(run_id, inputs, resolve_tracking_uri(explicit_uri))
        sys.stdout.write("".join(f"{a}\n" for a in answers))

    return run_command(answer)
