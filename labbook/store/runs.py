"""The read side: a stored run's config, overrides, checkpoints, params and metric histories, and searches
over runs. ``predict`` and ``resume`` read runs only through here (``compare`` and ``diff`` will too), so
"no such run" and "no checkpoint" read the same wherever they come from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from labbook.errors import UserError

CONFIG = "config/config.yaml"
OVERRIDES = "config/overrides.yaml"


class StoredRun:
    """One run as the store holds it."""

    def __init__(self, client: Any, run: Any, uri: str) -> None:
        self.client, self.run, self.uri = client, run, uri

    @classmethod
    def find(cls, uri: str, run_id: str) -> "StoredRun":
        """The run ``run_id`` in the store ``uri``; a :class:`UserError` saying which store lacks it."""
        from labbook.store.uri import existing_sqlite_store, run_not_found

        db = existing_sqlite_store(uri)
        if db is not None and not _in_sqlite(uri, db, run_id):  # a mistyped id: said before MLflow's import (~1.5 s)
            raise UserError(run_not_found(run_id, uri))
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        try:
            return cls(client, client.get_run(run_id), uri)
        except MlflowException:
            raise UserError(run_not_found(run_id, uri)) from None

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def status(self) -> str:
        return self.run.info.status

    @property
    def tags(self) -> Mapping[str, str]:
        return self.run.data.tags

    @property
    def params(self) -> Mapping[str, str]:
        return self.run.data.params

    def artifacts(self, folder: str) -> set[str]:
        return {a.path for a in self.client.list_artifacts(self.run_id, folder)}

    def _download(self, name: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(self.run_id, name, str(into)))

    def config(self, into: Path) -> dict[str, Any]:
        """The resolved config the run (now) runs with."""
        if CONFIG not in self.artifacts("config"):
            raise UserError(f"run {self.run_id} has no {CONFIG} artifact, so it cannot be rebuilt")
        return yaml.safe_load(self._download(CONFIG, into).read_text())

    def overrides(self, into: Path) -> list[str]:
        """The command-line overrides it was started with, each resume's appended."""
        if OVERRIDES not in self.artifacts("config"):
            raise UserError(f"run {self.run_id} has no {OVERRIDES} artifact, so it cannot be rebuilt")
        return list(yaml.safe_load(self._download(OVERRIDES, into).read_text()) or [])

    def checkpoint(self, names: Iterable[str], into: Path, why: str = "") -> Path:
        """A local copy of the first of ``names`` (``best.ckpt``, ``last.ckpt``) the run stored."""
        names = list(names)
        stored = self.artifacts("checkpoints")
        for name in names:
            if f"checkpoints/{name}" in stored:
                return self._download(f"checkpoints/{name}", into)
        wanted = " or ".join(f"checkpoints/{n}" for n in names)
        raise UserError(f"run {self.run_id} has no {wanted}{why}")

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in sorted(self.client.get_metric_history(self.run_id, key),
                                                   key=lambda m: (m.step, m.timestamp))]


def _in_sqlite(uri: str, db: Path, run_id: str) -> bool:
    """Whether the SQLite store at ``db`` holds ``run_id``, read with :mod:`sqlite3` (:mod:`labbook.store.read`);
    True when the file cannot be read that way, so that MLflow, which reads it next, has the last word."""
    from labbook.store.read import SqliteReader

    try:
        reader = SqliteReader(uri, db)
    except UserError:
        return True
    try:
        return reader.run(run_id) is not None
    except UserError:
        return True
    finally:
        reader.con.close()


def search_runs(uri: str, experiment: str | None = None, parent_run_id: str | None = None,
                tags: Mapping[str, str] | None = None, status: str | None = None) -> list[Any]:
    """Runs of ``experiment`` (by name; all when None), children of ``parent_run_id``, with these tags and
    status, newest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if experiment is None:
        experiments = [e.experiment_id for e in client.search_experiments()]
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise UserError(f"experiment {experiment!r} not found in the store {uri}")
        experiments = [found.experiment_id]
    if not experiments:
        return []
    from labbook.store.read import mlflow_filter

    tags = {**(tags or {}), **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    status_clause = f"attributes.status = '{status}'" if status else ""
    return client.search_runs(experiments, filter_string=mlflow_filter(tags, status_clause), max_results=50000,
                              order_by=["attributes.start_time DESC"])
