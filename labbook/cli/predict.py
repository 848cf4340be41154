"""``labbook predict RUN_ID [INPUT ...]``: answer inputs with a stored run's best checkpoint.

The run's stored config rebuilds the datamodule (for its input parsing and output formatting) and names
the model class; the checkpoint holds the weights and everything the model learnt about the data, the
datamodule's state included (``labbook.config.rebuild``, which also answers: ``answer``).
Answers go to stdout, one line per input and nothing else; errors are one line on stderr.
"""

from __future__ import annotations

import sys
from typing import Sequence

from labbook.errors import UserError

# Read by hand in main (an input may itself start with "-"); tab completion offers FLAGS.
URI_FLAG = "--tracking-uri"
FLAGS = (URI_FLAG, "-h", "--help")

USAGE = """\
usage: labbook predict [--tracking-uri URI] RUN_ID|models:/NAME@ALIAS [INPUT ...]
  Inputs come from stdin, one per line, when none are given. The store is URI, else $MLFLOW_TRACKING_URI,
  else sqlite:///mlflow.db in the working directory."""


class NoInputs(UserError):
    """Neither arguments nor stdin held an input: a usage error (exit 2)."""


def read_inputs(given: Sequence[str]) -> list[str]:
    """The inputs given as arguments, else stdin's lines; a blank one is a :class:`UserError` naming it (each
    input gets exactly one answer, so none may be skipped), no input at all :class:`NoInputs`."""
    for i, text in enumerate(given, start=1):
        if not text.strip():
            raise UserError(f"input {i} of {len(given)} (an argument) is blank: each input needs a value, and gets "
                            "one answer")
    if given:
        return list(given)
    lines = [line.rstrip("\r\n") for line in sys.stdin]
    for i, text in enumerate(lines, start=1):
        if not text.strip():
            raise UserError(f"stdin line {i} is blank: each input needs a value (one a line), and gets one answer")
    if not lines:
        raise NoInputs("no inputs: give them as arguments or on stdin, one per line")
    return lines


def predict(run_id: str, given: Sequence[str], uri: str) -> list[str]:
    """One answer per input, in order. The run (or model) is found first (a mistyped id is said before any input
    is read, stdin included), then the inputs are read, then the model is loaded: a run's MLflow model through
    MLflow's pyfunc, exactly as ``mlflow.pyfunc.load_model`` or ``labbook serve`` answer; a run without one
    from its stored checkpoints."""
    from labbook.store.read import open_reader

    if run_id.startswith("models:/"):  # a registered (or logged) model: MLflow's pyfunc answers
        from labbook.store.models import answer_with

        return answer_with(uri, run_id, lambda: read_inputs(given))
    reader = open_reader(uri)
    run = reader.find_run(run_id)
    from labbook.store.models import answer_with, run_model

    model = run_model(uri, run)
    if model is not None:  # the run's MLflow model: the code it trained with (a project's travels with it)
        return answer_with(uri, f"models:/{model.model_id}", lambda: read_inputs(given))
    inputs = read_inputs(given)  # a run without a model (stopped, or logger.log_model=none): its checkpoints
    from labbook.train.stored import rebuild

    stored = rebuild(reader, run)
    from labbook.config.rebuild import answer

    return answer(stored.model, stored.datamodule, inputs)


def main(args: Sequence[str]) -> int:
    from labbook.cli.console import fail, full_error, quiet_libraries
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
    run_id, given = args[0], list(args[1:])
    quiet_libraries()
    try:
        answers = predict(run_id, given, resolve_tracking_uri(explicit_uri))
    except NoInputs as exc:  # a usage error, as no RUN_ID is
        fail(exc, full_error())
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, as every command ends
        return fail(exc, full_error())
    sys.stdout.write("".join(f"{a}\n" for a in answers))
    return 0
