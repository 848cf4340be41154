"""labbook from Python (a notebook, a script): the same code paths as the command line. (``launch``, as
hydra-zen calls it: ``labbook.train`` is the room that trains.)

    import labbook

    result = labbook.launch("experiment=gmm_iris", "model.n_components=3")  # as `labbook train ...`
    result.run_id, result.metrics["test/log_likelihood"]
    model, datamodule = labbook.load(result.run_id)                          # the stored run, rebuilt

Errors are raised, not printed: a :class:`labbook.errors.UserError` carries the one line the command would
print.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any


@dataclasses.dataclass
class TrainResult:
    run_id: str
    metrics: dict[str, float]  # the last logged value of each metric (test/ ones from the best checkpoint)
    headline: tuple[str, float] | None  # (name, value) of the run's headline metric, when it has one
    tracking_uri: str


def launch(*overrides: str, config_dir: str | os.PathLike | None = None,
          tracking_uri: str | None = None) -> TrainResult | list[TrainResult]:
    """Train as ``labbook train OVERRIDES`` does, in this process: the result of the run (a list, one per job
    that ran here, for ``"-m"`` sweeps). ``config_dir``: the project's configs (``--config-dir``); the
    working directory's ``conf/`` otherwise. ``tracking_uri``: the store (``logger.tracking_uri``)."""
    from hydra.core.global_hydra import GlobalHydra

    from labbook.cli.train import _run_hydra, check_group_options
    from labbook.config.groups import use_project
    from labbook.errors import UserError

    args = [*overrides, *([f"logger.tracking_uri={tracking_uri}"] if tracking_uri else [])]
    saved_argv = list(sys.argv)
    saved_env = {k: os.environ.get(k) for k in ("HYDRA_FULL_ERROR", "LABBOOK_FULL_ERROR")}
    results: list[dict[str, Any]] = []
    try:
        use_project(config_dir)
        check_group_options(args)
        GlobalHydra.instance().clear()  # a notebook trains again and again in one process
        code = _run_hydra(args, full_error=True, results=results)
    finally:
        GlobalHydra.instance().clear()
        sys.argv[:] = saved_argv
        for key, value in saved_env.items():  # the two the command sets for its own error handling
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if code != 0 or not results:
        raise UserError(f"labbook train {' '.join(args)} ended with exit code {code}" +
                        ("" if results else " and trained nothing"))
    found = [TrainResult(r["run_id"], r["metrics"], r["headline"], r["uri"]) for r in results]
    return found if "-m" in args or "--multirun" in args else found[0]


def load(run_id: str, tracking_uri: str | None = None) -> tuple[Any, Any]:
    """A stored run's model (from its best checkpoint, else its last; in eval mode) and its datamodule (built
    from the run's config, not set up, its state from the same checkpoint: it answers without the training data),
    as ``labbook predict`` rebuilds them. ``run_id`` may be shortened."""
    from labbook.config.groups import use_project
    from labbook.store.read import open_reader
    from labbook.store.uri import resolve_tracking_uri
    from labbook.train.stored import rebuild

    use_project()
    reader = open_reader(resolve_tracking_uri(tracking_uri))
    stored = rebuild(reader, reader.find_run(run_id))
    return stored.model, stored.datamodule


__all__ = ["TrainResult", "launch", "load"]
