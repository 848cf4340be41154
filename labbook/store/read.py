"""The one read side: every command that reads runs (``predict``, ``resume``, ``compare``, ``diff``, ``reap``,
the sweep's summary, the search) reads them here, as :class:`RunRecord` values, so "no such run", "no
checkpoint" and a shortened id read the same wherever they come from.

Importing MLflow alone takes over 2 s here (``python -c "from mlflow.tracking import MlflowClient"``),
while a table of runs should appear in well under a second. So these commands read the store without
MLflow where they can:

* ``sqlite:///`` stores: MLflow's own tables (``experiments``, ``runs``, ``tags``, ``params``,
  ``latest_metrics``, and ``metrics`` for a metric's history) with the standard library's :mod:`sqlite3`, opened read-only, so reading never
  creates or migrates a store;
* ``http(s)://`` tracking servers: MLflow's REST API (``experiments/search``, ``runs/get``,
  ``runs/search``, ``metrics/get-history``, ``/get-artifact``) with :mod:`urllib`;
* anything else (``postgresql://``, ``file:``, ``databricks``...): :class:`ClientReader`, which is
  MlflowClient behind the same interface.

MLflow's search-filter grammar (``--filter``) is MLflow's: the REST server and MlflowClient evaluate it;
on SQLite the filtered search goes through :class:`ClientReader` (the one case that pays MLflow's import
time) rather than through a translation of the grammar that could disagree with MLflow's.

Every reader returns :class:`RunRecord` values: a run's info, params, latest metrics and tags. A run's
artifacts (its config, overrides and checkpoints) are read from disk where the store keeps them in a local
folder (a SQLite store's ``mlartifacts``), else through MlflowClient, which knows every artifact repository.
:func:`search_runs` is the shortcut for "runs of this experiment, with this parent, these tags, this status".
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import math
import os
import shutil
import sqlite3
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from labbook import names
from labbook.errors import UserError
from labbook.redact import redact_uri
from labbook.store.reach import check_database
from labbook.store.uri import existing_sqlite_store, request_timeout_s, run_not_found

_PAGE = 1000  # runs per REST page (the server allows more; smaller pages keep each answer quick)
_SQL_CHUNK = 500  # bound parameters per IN (...) clause, well under SQLite's limit
_HISTORY_PAGE = 25000  # a metric's values per REST page (the server's most)
MIN_PREFIX = 6  # a run id may be shortened to this many characters (compare shows 8); fewer match too much


class RunNotFound(UserError):
    """No run has this id (or an id starting with it)."""


class AmbiguousRunId(UserError):
    """A shortened run id that more than one run's id starts with."""


@dataclass
class RunRecord:
    """One run: what MLflow's ``Run`` holds, minus the metric histories (``metrics`` are the latest values)."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    start_time: int | None  # ms since the epoch, as MLflow stores it
    end_time: int | None
    artifact_uri: str = ""
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metric_steps: dict[str, int] = field(default_factory=dict)  # each metric's last step


class Reader(abc.ABC):
    """A store's runs, read; subclasses read one kind of store."""

    uri: str

    @abc.abstractmethod
    def experiments(self) -> dict[str, str]:
        """Active experiments, ``{experiment_id: name}``."""

    @abc.abstractmethod
    def run(self, run_id: str) -> RunRecord | None:
        """The run with exactly this id, or None."""

    @abc.abstractmethod
    def search(self, experiment_ids: Iterable[str] | None = None, tags: Mapping[str, str] | None = None,
               filter_string: str = "", max_results: int | None = None, status: str | None = None) -> list[RunRecord]:
        """Active runs of these experiments (all active experiments when None) carrying these tags, in this
        status (``RUNNING``, ``FINISHED``, ...) and matching MLflow's ``filter_string``, newest start first."""

    def run_ids_starting(self, prefix: str) -> list[str]:
        """Ids of the runs whose id starts with ``prefix``."""
        return [r.run_id for r in self.search() if r.run_id.startswith(prefix)]

    def artifact_text(self, run: RunRecord, path: str) -> str | None:
        """The text of the run's artifact ``path`` (``config/config.yaml``), or None when it has none."""
        local = _local_artifact(run, path)
        if local is not None or _local_root(run) is not None:
            return None if local is None else local.read_text(errors="replace")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return self._client().download(run, path, Path(tmp)).read_text(errors="replace")
            except Exception:  # noqa: BLE001 - any repository's "no such artifact" reads as: it has none
                return None

    def artifacts(self, run: RunRecord, folder: str) -> set[str]:
        """The paths of the run's artifacts directly in ``folder`` (``checkpoints`` -> ``checkpoints/last.ckpt``)."""
        root = _local_root(run)
        if root is None:
            return self._client().artifacts(run, folder)
        where = root / folder
        return {f"{folder}/{p.name}" for p in where.iterdir()} if where.is_dir() else set()

    def download(self, run: RunRecord, path: str, into: Path) -> Path:
        """A local copy of the run's artifact ``path`` in the folder ``into``."""
        into.mkdir(parents=True, exist_ok=True)
        local = _local_artifact(run, path)
        if local is not None:
            return Path(shutil.copyfile(local, into / local.name))
        if _local_root(run) is not None:
            raise UserError(f"run {run.run_id} has no {path}")
        return self._client().download(run, path, into)

    def metric_history(self, run: RunRecord, key: str) -> list[tuple[int, float]]:
        """Every logged value of the run's metric ``key`` as ``(step, value)``, in step order."""
        return self._client().metric_history(run, key)

    def metric_histories(self, runs: Iterable[RunRecord], keys: Iterable[str]) -> dict[tuple[str, str], list[float]]:
        """``{(run_id, key): values in step order}`` for each of ``runs`` and each of ``keys`` the run has
        (``compare --agg``)."""
        keys = list(keys)
        return {(run.run_id, key): [v for _, v in self.metric_history(run, key)]
                for run in runs for key in keys if key in run.metrics}

    def _client(self) -> "ClientReader":
        """MlflowClient behind this interface, for what is not read faster here (slow to import: only on need)."""
        if not hasattr(self, "_fallback"):
            self._fallback = ClientReader(self.uri)
        return self._fallback

    # Shared on top of the above.

    def find_run(self, run_id: str) -> RunRecord:
        """The run ``run_id``, or the one run whose id starts with it (ids are shown shortened), else a
        :class:`UserError` naming the id and the store."""
        found = self.run(run_id)
        if found is not None:
            return found
        hexadecimal = all(c in "0123456789abcdef" for c in run_id.lower())
        if MIN_PREFIX <= len(run_id) < 32 and hexadecimal:
            matches = sorted(self.run_ids_starting(run_id.lower()))
            if len(matches) == 1:
                found = self.run(matches[0])
                if found is not None:
                    return found
            if len(matches) > 1:
                shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
                raise AmbiguousRunId(f"run id prefix {run_id!r} matches {len(matches)} runs in the store "
                                     f"{redact_uri(self.uri)}: {shown}; give more of it")
        if hexadecimal and len(run_id) < MIN_PREFIX:
            raise RunNotFound(f"{run_not_found(run_id, self.uri)}: a shortened run id needs {MIN_PREFIX} characters "
                              "or more")
        raise RunNotFound(run_not_found(run_id, self.uri))

    def experiment_id(self, name: str) -> str:
        """The id of the active experiment ``name``; a :class:`UserError` when the store has none of that name."""
        found = [i for i, n in self.experiments().items() if n == name]
        if not found:
            raise UserError(f"experiment {name!r} not found in the store {redact_uri(self.uri)}")
        return found[0]

    def config(self, run: RunRecord) -> dict[str, Any]:
        """The resolved config the run (now) trains with (:data:`labbook.names.CONFIG`)."""
        return yaml.safe_load(self._required_text(run, names.CONFIG))

    def overrides(self, run: RunRecord) -> list[str]:
        """The command-line overrides it was started with, each resume's appended (:data:`labbook.names.OVERRIDES`)."""
        return list(yaml.safe_load(self._required_text(run, names.OVERRIDES)) or [])

    def _required_text(self, run: RunRecord, path: str) -> str:
        text = self.artifact_text(run, path)
        if text is None:
            raise UserError(f"run {run.run_id} has no {path} artifact, so it cannot be rebuilt")
        return text

    def checkpoint(self, run: RunRecord, paths: Iterable[str], into: Path, why: str = "") -> Path:
        """A local copy of the first of ``paths`` (:data:`labbook.names.BEST_CHECKPOINT`, ``LAST_CHECKPOINT``)
        the run stored."""
        paths = list(paths)
        stored = self.artifacts(run, names.CHECKPOINTS)
        for path in paths:
            if path in stored:
                return self.download(run, path, into)
        raise UserError(f"run {run.run_id} has no {' or '.join(paths)}{why}")


def open_reader(uri: str) -> Reader:
    """The fastest reader for the store ``uri`` (resolved by :func:`labbook.store.uri.resolve_tracking_uri`).
    Never creates a store: a missing SQLite file or ``file:`` folder is a :class:`UserError`."""
    db = existing_sqlite_store(uri)
    if db is not None:
        return SqliteReader(uri, db)
    if uri.startswith(("http://", "https://")):
        return RestReader(uri)
    if uri.startswith("file:"):
        folder = Path(urllib.parse.urlparse(uri).path)
        if not folder.is_dir():
            raise UserError(f"no tracking store at {folder} (pass --tracking-uri URI or set MLFLOW_TRACKING_URI)")
    check_database(uri)  # a database that is down: one line now, not MLflow's minute of retries
    return ClientReader(uri)


def search_runs(uri: str, experiment: str | None = None, parent_run_id: str | None = None,
                tags: Mapping[str, str] | None = None, status: str | None = None) -> list[RunRecord]:
    """Runs of ``experiment`` (by name; all when None), children of ``parent_run_id``, with these tags and
    status, newest first."""
    reader = open_reader(uri)
    ids = None if experiment is None else [reader.experiment_id(experiment)]
    tags = {**(tags or {}), **({names.PARENT_RUN: parent_run_id} if parent_run_id else {})}
    return reader.search(ids, tags, status=status)


# SQLite: MLflow's tables, read-only.


class SqliteReader(Reader):
    def __init__(self, uri: str, db: Path) -> None:
        self.uri, self.db = uri, db
        # mode=ro: a read never creates the file, never runs MLflow's schema migrations, never takes a
        # writer's lock; the timeout rides out a training run's commit in progress.
        self.con = sqlite3.connect(f"{Path(db).resolve().as_uri()}?mode=ro", uri=True, timeout=10)
        try:
            self.con.execute("SELECT 1 FROM runs JOIN experiments USING (experiment_id) LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{db} is not an MLflow tracking store ({exc})") from None

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        try:
            return self.con.execute(sql, tuple(args)).fetchall()
        except sqlite3.DatabaseError as exc:  # a store from an MLflow whose schema differs from this one
            raise UserError(f"cannot read the tracking store {self.db}: {exc}") from None

    def experiments(self) -> dict[str, str]:
        return {str(i): n for i, n in self._rows(
            "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active' ORDER BY experiment_id")}

    _RUN_COLUMNS = "r.run_uuid, r.name, r.experiment_id, r.status, r.start_time, r.end_time, r.artifact_uri"

    def run(self, run_id: str) -> RunRecord | None:
        rows = self._rows(f"SELECT {self._RUN_COLUMNS} FROM runs r WHERE r.run_uuid = ?", (run_id,))
        return self._complete(rows)[0] if rows else None

    def run_ids_starting(self, prefix: str) -> list[str]:
        # run ids are hex (checked by the caller), so the prefix holds no LIKE wildcards
        return [r for (r,) in self._rows("SELECT run_uuid FROM runs WHERE run_uuid LIKE ?", (prefix + "%",))]

    def search(self, experiment_ids: Iterable[str] | None = None, tags: Mapping[str, str] | None = None,
               filter_string: str = "", max_results: int | None = None, status: str | None = None) -> list[RunRecord]:
        if filter_string.strip():
            return self._client().search(experiment_ids, tags, filter_string, max_results, status)
        sql = [f"SELECT {self._RUN_COLUMNS} FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id",
               "WHERE r.lifecycle_stage = 'active' AND e.lifecycle_stage = 'active'"]
        args: list[Any] = []
        if experiment_ids is not None:
            ids = [int(i) for i in experiment_ids]
            if not ids:
                return []
            sql.append(f"AND r.experiment_id IN ({','.join('?' * len(ids))})")
            args += ids
        for key, value in (tags or {}).items():
            sql.append("AND EXISTS (SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ? AND t.value = ?)")
            args += [key, value]
        if status is not None:
            sql.append("AND r.status = ?")
            args.append(status)
        sql.append("ORDER BY r.start_time DESC, r.run_uuid")
        if max_results is not None:
            sql.append(f"LIMIT {int(max_results)}")
        return self._complete(self._rows(" ".join(sql), args))

    def _complete(self, rows: list[tuple]) -> list[RunRecord]:
        """Records for these ``runs`` rows, with their params, latest metrics and tags (one query each per
        chunk of runs, not per run)."""
        records = {row[0]: RunRecord(row[0], row[1] or "", str(row[2]), row[3], row[4], row[5], row[6] or "")
                   for row in rows}
        ids = list(records)
        for start in range(0, len(ids), _SQL_CHUNK):
            chunk = ids[start:start + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            for key, value, run_id in self._rows(f"SELECT key, value, run_uuid FROM params WHERE run_uuid IN ({marks})", chunk):
                records[run_id].params[key] = value
            for key, value, run_id in self._rows(f"SELECT key, value, run_uuid FROM tags WHERE run_uuid IN ({marks})", chunk):
                records[run_id].tags[key] = value
            for key, value, is_nan, step, run_id in self._rows(
                    f"SELECT key, value, is_nan, step, run_uuid FROM latest_metrics WHERE run_uuid IN ({marks})", chunk):
                records[run_id].metrics[key] = math.nan if is_nan else float(value)
                records[run_id].metric_steps[key] = int(step)
        for record in records.values():
            record.name = record.name or record.tags.get(names.RUN_NAME, "")
        return list(records.values())

    def metric_history(self, run: RunRecord, key: str) -> list[tuple[int, float]]:
        rows = self._rows("SELECT step, value, is_nan FROM metrics WHERE run_uuid = ? AND key = ? "
                          "ORDER BY step, timestamp", (run.run_id, key))
        return [(int(step), math.nan if is_nan else float(value)) for step, value, is_nan in rows]

    def metric_histories(self, runs: Iterable[RunRecord], keys: Iterable[str]) -> dict[tuple[str, str], list[float]]:
        ids, keys = [r.run_id for r in runs], list(keys)
        found: dict[tuple[str, str], list[float]] = {}
        if not keys:
            return found
        step = max(1, _SQL_CHUNK - len(keys))
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            for run_id, key, value, is_nan in self._rows(
                    f"SELECT run_uuid, key, value, is_nan FROM metrics WHERE run_uuid IN ({','.join('?' * len(chunk))}) "
                    f"AND key IN ({','.join('?' * len(keys))}) ORDER BY run_uuid, key, step, timestamp", [*chunk, *keys]):
                found.setdefault((run_id, key), []).append(math.nan if is_nan else float(value))
        return found


# A tracking server: MLflow's REST API.


class RestReader(Reader):
    def __init__(self, uri: str) -> None:
        self.uri = uri
        # Credentials in the URI (http://user:password@host) are sent as MlflowClient's HTTP library sends them,
        # as basic auth, never as part of the address: urllib would take them for the host.
        parts = urllib.parse.urlsplit(uri)
        self.base = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])).rstrip("/")
        self._uri_user = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
        self.timeout_s = request_timeout_s()  # each request's; one try (a server that never answers: one line)

    def _headers(self) -> dict[str, str]:
        """The credentials MlflowClient would send: from the same environment variables, else the URI's."""
        headers = {"Content-Type": "application/json"}
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if not (user and password) and self._uri_user[0]:
            user, password = self._uri_user
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif user and password:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return headers

    def _request(self, path: str, body: Mapping[str, Any] | None = None, query: Mapping[str, str] | None = None,
                 missing_ok: bool = False) -> bytes | None:
        url = f"{self.base}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return answer.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                error = json.loads(text)
                if missing_ok and (exc.code == 404 or error.get("error_code") == "RESOURCE_DOES_NOT_EXIST"):
                    return None
                text = error.get("message") or text
            if missing_ok and exc.code == 404:
                return None
            raise RestError(exc.code, f"tracking server {redact_uri(self.uri)}: "
                                      f"{text.strip().splitlines()[0] if text.strip() else exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"tracking server {redact_uri(self.uri)} cannot be reached ({reason}); is it running? "
                            "(or set LABBOOK_REQUEST_TIMEOUT_S for a slow one)") from None

    def _json(self, path: str, body: Mapping[str, Any] | None = None, **query: str) -> dict[str, Any] | None:
        raw = self._request(f"api/2.0/mlflow/{path}", body, query or None, missing_ok=body is None)
        return None if raw is None else json.loads(raw or b"{}")

    def experiments(self) -> dict[str, str]:
        found: dict[str, str] = {}
        token = None
        while True:
            body = {"max_results": _PAGE, "view_type": "ACTIVE_ONLY", **({"page_token": token} if token else {})}
            page = self._json("experiments/search", body) or {}
            found.update({e["experiment_id"]: e["name"] for e in page.get("experiments", [])})
            token = page.get("next_page_token")
            if not token:
                return found

    def run(self, run_id: str) -> RunRecord | None:
        if not run_id or "/" in run_id:
            return None
        try:
            answer = self._json("runs/get", run_id=run_id)
        except RestError as exc:  # a malformed id is "no such run" to the user, whatever the server calls it
            if exc.status == 400:
                return None
            raise
        return _from_rest(answer["run"]) if answer and "run" in answer else None

    def search(self, experiment_ids: Iterable[str] | None = None, tags: Mapping[str, str] | None = None,
               filter_string: str = "", max_results: int | None = None, status: str | None = None) -> list[RunRecord]:
        ids = list(self.experiments() if experiment_ids is None else experiment_ids)
        if not ids:
            return []
        body: dict[str, Any] = {"experiment_ids": ids, "filter": mlflow_filter(tags, filter_string, status),
                                "run_view_type": "ACTIVE_ONLY", "order_by": ["attributes.start_time DESC"]}
        found: list[RunRecord] = []
        while max_results is None or len(found) < max_results:
            body["max_results"] = _PAGE if max_results is None else min(_PAGE, max_results - len(found))
            try:
                page = self._json("runs/search", body) or {}
            except RestError as exc:
                if filter_string.strip() and exc.status == 400:
                    raise UserError(f"--filter {filter_string!r}: {exc.message}") from None
                raise
            found += [_from_rest(r) for r in page.get("runs", [])]
            body["page_token"] = page.get("next_page_token")
            if not body["page_token"]:
                break
        return found

    def metric_history(self, run: RunRecord, key: str) -> list[tuple[int, float]]:
        found: list[tuple[int, int, float]] = []
        query = {"run_id": run.run_id, "metric_key": key, "max_results": str(_HISTORY_PAGE)}
        while True:
            page = self._json("metrics/get-history", **query) or {}
            found += [(int(m.get("step", 0)), int(m.get("timestamp", 0)), float(m.get("value", math.nan)))
                      for m in page.get("metrics", [])]  # NaN comes as the string "NaN"
            if not page.get("next_page_token"):
                return [(step, value) for step, _, value in sorted(found, key=lambda m: m[:2])]
            query["page_token"] = page["next_page_token"]

    def artifact_text(self, run: RunRecord, path: str) -> str | None:
        if _local_root(run) is not None:
            return super().artifact_text(run, path)
        # /get-artifact is the server's own download route: it reads proxied (mlflow-artifacts:) and
        # direct artifact stores alike.
        try:
            raw = self._request("get-artifact", query={"path": path, "run_id": run.run_id}, missing_ok=True)
        except RestError:
            return None
        return None if raw is None else raw.decode(errors="replace")


class RestError(UserError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _from_rest(run: Mapping[str, Any]) -> RunRecord:
    info, data = run.get("info", {}), run.get("data", {})
    tags = {t["key"]: t.get("value", "") for t in data.get("tags", [])}
    return RunRecord(
        run_id=info.get("run_id") or info["run_uuid"], name=info.get("run_name") or tags.get(names.RUN_NAME, ""),
        experiment_id=str(info.get("experiment_id", "")), status=info.get("status", ""),
        start_time=_int(info.get("start_time")), end_time=_int(info.get("end_time")),
        artifact_uri=info.get("artifact_uri", ""),
        params={p["key"]: p.get("value", "") for p in data.get("params", [])},
        metrics={m["key"]: float(m.get("value", math.nan)) for m in data.get("metrics", [])}, tags=tags,
        metric_steps={m["key"]: int(m.get("step", 0)) for m in data.get("metrics", [])})


def _int(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def mlflow_filter(tags: Mapping[str, str] | None, filter_string: str = "", status: str | None = None) -> str:
    """One MLflow filter string: the tag equalities, the status, and the user's filter (the grammar has only
    AND)."""
    clauses = [f"tags.`{key}` = '{value}'" for key, value in (tags or {}).items()]
    if status is not None:
        clauses.append(f"attributes.status = '{status}'")
    if filter_string.strip():
        clauses.append(filter_string.strip())
    return " and ".join(clauses)


def _local_root(run: RunRecord) -> Path | None:
    """The folder holding the run's artifacts when it is on this machine's disk (a SQLite store's
    ``mlartifacts``), else None."""
    if not run.artifact_uri.startswith("file:") and not run.artifact_uri.startswith("/"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(run.artifact_uri).path))


def _local_artifact(run: RunRecord, path: str) -> Path | None:
    """The artifact's file when the run's artifacts are a local folder and it is there, else None."""
    root = _local_root(run)
    target = root / path if root is not None else None
    return target if target is not None and target.is_file() else None


# Anything else: MlflowClient (slow to import, complete).


class ClientReader(Reader):
    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def _client(self) -> "ClientReader":
        return self

    def experiments(self) -> dict[str, str]:
        return {e.experiment_id: e.name for e in self.client.search_experiments()}

    def run(self, run_id: str) -> RunRecord | None:
        from mlflow.exceptions import MlflowException

        try:
            return _from_client(self.client.get_run(run_id))
        except MlflowException:
            return None

    def search(self, experiment_ids: Iterable[str] | None = None, tags: Mapping[str, str] | None = None,
               filter_string: str = "", max_results: int | None = None, status: str | None = None) -> list[RunRecord]:
        from mlflow.exceptions import MlflowException

        ids = list(self.experiments() if experiment_ids is None else experiment_ids)
        if not ids:
            return []
        try:
            runs = self.client.search_runs(ids, filter_string=mlflow_filter(tags, filter_string, status),
                                           max_results=max_results or 50000, order_by=["attributes.start_time DESC"])
        except MlflowException as exc:
            if filter_string.strip():
                raise UserError(f"--filter {filter_string!r}: {exc.message.strip().splitlines()[0]}") from None
            raise
        return [_from_client(r) for r in runs]

    def artifacts(self, run: RunRecord, folder: str) -> set[str]:
        if _local_root(run) is not None:
            return super().artifacts(run, folder)
        return {a.path for a in self.client.list_artifacts(run.run_id, folder)}

    def download(self, run: RunRecord, path: str, into: Path) -> Path:
        if _local_root(run) is not None:
            return super().download(run, path, into)
        into.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run.run_id, path, str(into)))

    def metric_history(self, run: RunRecord, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in sorted(self.client.get_metric_history(run.run_id, key),
                                                   key=lambda m: (m.step, m.timestamp))]


def _from_client(run: Any) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(run_id=info.run_id, name=info.run_name or data.tags.get(names.RUN_NAME, ""),
                     experiment_id=str(info.experiment_id), status=info.status, start_time=info.start_time,
                     end_time=info.end_time, artifact_uri=info.artifact_uri or "", params=dict(data.params),
                     metrics={k: float(v) for k, v in data.metrics.items()}, tags=dict(data.tags),
                     metric_steps={m.key: int(m.step) for m in getattr(data, "_metric_objs", [])})
