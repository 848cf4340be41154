"""Every write labbook makes into MLflow goes through a :class:`Recorder`: a run's params, config, git state
and versions, metrics (batched), files, tags and status — for a training run as for a sweep's parent, a
search's trials, a dataset record or a reaped run. So every write is redacted (:mod:`labbook.redact`),
waits out a locked SQLite store or a tracking server that is briefly away (:mod:`labbook.store.patience`),
and keeps within MLflow's limits.

Only rank 0 ever records; other ranks learn the run's id through the environment and never touch the
store. Opening, re-opening and closing runs, and their statuses, live in :mod:`labbook.run.lifecycle`.
"""

from __future__ import annotations

import functools
import getpass
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from labbook import names
from labbook.config.keys import flatten, run_local
from labbook.config.schemas import MLflowConfig
from labbook.redact import redact, redact_tree
from labbook.store.patience import PatientClient
from labbook.store.uri import artifact_root

MODEL_DEVELOPMENT = "custom_model_development"  # the experiment kind (tag names.EXPERIMENT_KIND) of labbook's
MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value
MAX_TAG_LENGTH = 5000  # and for a tag's
VERSIONED = ("torch", "pytorch-lightning", "hydra-core", "mlflow", "numpy", "labbook")
_BATCH = 100  # MLflow accepts at most 100 params/tags and 1000 metrics per log_batch


def _param_text(value: Any) -> str:
    text = redact("null" if value is None else str(value))
    if len(text) > MAX_PARAM_LENGTH:
        marker = f" …[truncated; full value in {names.CONFIG}]"
        text = text[: MAX_PARAM_LENGTH - len(marker)] + marker
    return text


# Untracked files that count as a project's code (a new model file not yet added), in the diff artifact too;
# what labbook itself writes beside them (its store, its outputs) never does.
SOURCE_SUFFIXES = (".py", ".pyx", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".json", ".sh", ".ipynb")
NOT_SOURCE = ("mlartifacts/", "logs/", "outputs/", "multirun/", ".venv/", "venv/")
MAX_UNTRACKED_BYTES = 1 << 20  # a bigger untracked file is named in the diff, not copied into it


def git_state(folder: Path) -> dict[str, str]:
    """Commit, dirty flag and diff of the git repository holding ``folder`` — the user's project, where the
    run was started ('' when it is in none). Untracked source files (:data:`SOURCE_SUFFIXES`) count as
    changes and are in the diff, as new files."""

    def git(*args: str, ok: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=20)
        return done.stdout if done.returncode in ok else ""

    try:
        commit = git("rev-parse", "HEAD").strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if not commit:
        return {"commit": "", "dirty": "", "diff": ""}
    top = Path(git("rev-parse", "--show-toplevel").strip() or folder)
    tracked = git("status", "--porcelain", "--untracked-files=no").strip()
    untracked = [f for f in git("ls-files", "--others", "--exclude-standard", "--full-name", str(top)).splitlines()
                 if f.endswith(SOURCE_SUFFIXES) and not f.startswith(NOT_SOURCE)]
    diff = git("diff", "HEAD") if tracked else ""
    for name in untracked:
        path = top / name
        if path.stat().st_size > MAX_UNTRACKED_BYTES:
            diff += f"# untracked, not copied ({path.stat().st_size} bytes): {name}\n"
        else:  # exit code 1: the files differ, as a new file always does
            diff += git("-C", str(top), "diff", "--no-index", "--", "/dev/null", name, ok=(0, 1))
    return {"commit": commit, "dirty": "true" if tracked or untracked else "false", "diff": diff}


def labbook_source() -> dict[str, str]:
    """Where this labbook was installed from: its folder, and the commit when that is a git checkout (an
    editable install), as tags apart from the project's own git state."""
    from labbook.config.groups import CONF_DIR

    where = CONF_DIR.parent
    state = git_state(where) if (where / ".git").exists() else {"commit": ""}
    return {names.LABBOOK_FROM: str(where), **({names.LABBOOK_COMMIT: state["commit"]} if state["commit"] else {})}


@functools.lru_cache(maxsize=1)
def installed_packages() -> dict[str, str]:
    """Every installed distribution's version, by normalised name. Read once per process: the packages a
    process imported cannot change under it. A ``NAME-VERSION.dist-info`` folder's name says both (parsing
    ~130 METADATA files instead took ~0.13 s of every run's start); other distributions (``.egg-info``) are
    read from their metadata."""
    from importlib.metadata import distributions

    installed: dict[str, str] = {}
    for dist in distributions():
        folder = str(getattr(dist, "_path", ""))  # PathDistribution's folder; private, so only a shortcut
        name, sep, version = Path(folder).name.removesuffix(".dist-info").partition("-")
        if not (folder.endswith(".dist-info") and sep and version):
            name, version = dist.metadata["Name"], dist.version
        if name:
            installed.setdefault(name.lower().replace("_", "-"), version)
    return installed


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (tagged as model development) when missing."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        location = f"{root}/{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}" if root else None
        try:
            exp_id = client.create_experiment(name, artifact_location=location,
                                              tags={names.EXPERIMENT_KIND: MODEL_DEVELOPMENT})
            return exp_id
        except MlflowException:  # a parallel sweep job created it a moment ago
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(names.EXPERIMENT_KIND) != MODEL_DEVELOPMENT:
        client.set_experiment_tag(exp.experiment_id, names.EXPERIMENT_KIND, MODEL_DEVELOPMENT)
    return exp.experiment_id


def param_taken(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing to change a param's value (another process logged it first)."""
    return "Changing param values is not allowed" in str(exc)


def patient_client(uri: str, patience_s: float | None = None) -> Any:
    """An MlflowClient on ``uri`` whose every call waits out a locked SQLite store or an absent server for up
    to ``patience_s`` seconds (``logger.server_patience_s``'s default when None)."""
    return PatientClient(MlflowClient(tracking_uri=uri), uri,
                         MLflowConfig.server_patience_s if patience_s is None else patience_s)


class Recorder:
    """Everything written into one MLflow run (params, config, git state, artifacts, plots, tags, metrics
    through :meth:`lightning_logger`, its status). Opening a run and owning it while it trains is
    :class:`labbook.run.lifecycle.TrackedRun`'s; :meth:`for_run` writes into any existing run."""

    def __init__(self, client: Any, run_id: str, uri: str) -> None:
        self.client, self.run_id, self.uri = client, run_id, uri  # client: a PatientClient (patient_client)
        self.logger: Any = None  # labbook.run.metrics_logger.MLflowMetricsLogger once a trainer asks for it

    @classmethod
    def for_run(cls, uri: str, run_id: str, patience_s: float | None = None) -> "Recorder":
        """A recorder for the existing run ``run_id`` in the store ``uri``."""
        return cls(patient_client(uri, patience_s), run_id, uri)

    def lightning_logger(self, flush_every_s: float, background: Any = None,
                         stored_steps: Mapping[str, int] | None = None) -> Any:
        """The run's Lightning logger (:class:`labbook.run.metrics_logger.MLflowMetricsLogger`)."""
        from labbook.run.metrics_logger import MLflowMetricsLogger  # Lightning: only where a trainer runs

        self.logger = MLflowMetricsLogger(self.client, self.run_id, flush_every_s, background, stored_steps)
        return self.logger

    def log_config(self, resolved: Mapping[str, Any], overrides: Iterable[str], params: bool = True) -> None:
        """Flattened config as params (once: MLflow refuses a param's second value) except the run-local
        values (:func:`run_local`), which are tags; the config and the overrides as YAML artifacts (rewritten by
        a resume, so they always rebuild the run as it is now). Every value is redacted before it is
        serialised (:func:`labbook.redact.redact_tree`)."""
        import yaml

        resolved, overrides = redact_tree(dict(resolved)), redact_tree(list(overrides))
        flat = flatten(resolved)
        if params:
            self.log_params({k: v for k, v in flat.items() if not run_local(k)})
        self.set_tags({k: _param_text(v) for k, v in flat.items() if run_local(k)})
        self.log_text(config_text(resolved), names.CONFIG)
        self.log_text(yaml.safe_dump(overrides), names.OVERRIDES)

    def log_git(self, folder: Path) -> None:
        """The project's git state (:func:`git_state` of ``folder``, where the run was started), and where
        labbook itself came from."""
        self.set_tags(labbook_source())
        state = git_state(folder)
        tags = {names.GIT_COMMIT: state["commit"] or "unknown", names.GIT_DIRTY: state["dirty"] or "unknown"}
        if state["commit"]:
            tags[names.SOURCE_GIT_COMMIT] = state["commit"]
        self.set_tags(tags)
        if state["diff"]:
            self.log_text(state["diff"], names.GIT_PATCH)

    def log_environment(self) -> None:
        """Tags ``versions.<package>`` for what decides a run's numbers, and every installed distribution
        (``name==version``, sorted) as the artifact :data:`labbook.names.PACKAGES`."""
        installed = installed_packages()
        tags = {f"{names.VERSIONS}python": sys.version.split()[0]}
        for package in VERSIONED:
            tags[f"{names.VERSIONS}{package}"] = installed.get(package, "not installed")
        self.set_tags(tags)
        self.log_text("".join(f"{name}=={version}\n" for name, version in sorted(installed.items())),
                      names.PACKAGES)

    def log_models(self, checkpoints: Mapping[str, Any], which: str, resolved: Mapping[str, Any], model: Any,
                   datamodule: Any) -> list[str]:
        """Log the run's checkpoints as MLflow models (:mod:`labbook.run.model`): ``which`` is ``best`` or
        ``kept``, ``checkpoints`` the checkpoint callback's state (``best``, ``last``: local paths). A
        checkpoint the run has a model of already (same kind, same epoch: a resume that did not improve) is
        not logged again. Once a model holds a checkpoint, the run's own copy is removed (the bytes are stored
        once). Returns the new models' ids."""
        from labbook.run.model import kept_checkpoints, log_model, model_files, read_position
        from labbook.store.models import logged_models

        run = self.client.get_run(self.run_id)
        have = {(m.tags.get(names.MODEL_CHECKPOINT_KIND), m.tags.get(names.MODEL_EPOCH))
                for m in logged_models(self.client, run.info.experiment_id, self.run_id)}
        logged = []
        from labbook.store.models import using_store

        with using_store(self.uri):
            for checkpoint in kept_checkpoints([read_position(p) for p in model_files(checkpoints, which)]):
                if (checkpoint.kind, str(checkpoint.epoch)) not in have:
                    config = config_text({**resolved, "ckpt_path": None})
                    logged.append(log_model(self.client, self.run_id, checkpoint, config, model, datamodule))
                have.add((checkpoint.kind, str(checkpoint.epoch)))
                # The bytes once: the model holds them now. (A resume fetches them back from it.)
                self._remove_artifact(run.info.artifact_uri, names.STORED_CHECKPOINT[checkpoint.kind])
        return logged

    def _remove_artifact(self, artifact_uri: str, path: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(artifact_uri)
        if any(f.path == path for f in repository.list_artifacts(str(Path(path).parent))):
            repository.delete_artifacts(path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries = [Param(k[:250], _param_text(v)) for k, v in params.items()]
        for i in range(0, len(entries), _BATCH):
            self.client.log_batch(self.run_id, params=entries[i : i + _BATCH], synchronous=True)

    def log_param(self, key: str, value: Any) -> None:
        """One param, alone: the store refuses another value for ``key`` (:func:`param_taken` tells it)."""
        self.client.log_param(self.run_id, key, _param_text(value))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, redact(str(v))[:MAX_TAG_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + _BATCH], synchronous=True)

    def delete_tags(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.client.delete_tag(self.run_id, key)

    def log_metric(self, key: str, value: float, step: int = 0) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def log_inputs(self, datasets: list[Any]) -> None:
        """MLflow ``DatasetInput`` entities: the data the run trained on."""
        self.client.log_inputs(self.run_id, datasets=datasets)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def log_file(self, path: str | os.PathLike, artifact_file: str) -> None:
        """Store ``path`` under ``artifact_file`` (a name of our choosing, not the file's own)."""
        artifact_dir, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            link = Path(tmp) / name
            link.symlink_to(Path(path).resolve())
            self.client.log_artifact(self.run_id, str(link), artifact_dir or None)

    def log_report(self, report: Mapping[str, Any]) -> list[str]:
        """Figures become ``plots/<name>.png``; dicts of arrays become ``<name>.npz``."""
        stored = []
        for name, item in report.items():
            if hasattr(item, "savefig"):
                buf = io.BytesIO()
                item.savefig(buf, format="png", dpi=110, bbox_inches="tight")
                self._log_bytes(buf.getvalue(), f"{names.PLOTS}/{name}.png")
                import matplotlib.pyplot as plt

                plt.close(item)
                stored.append(f"{names.PLOTS}/{name}.png")
            elif isinstance(item, Mapping):
                buf = io.BytesIO()
                np.savez(buf, **{k: np.asarray(v) for k, v in item.items()})
                self._log_bytes(buf.getvalue(), f"{name}.npz")
                stored.append(f"{name}.npz")
            elif isinstance(item, str):
                self.log_text(item, f"{name}.txt")  # redacted there
                stored.append(f"{name}.txt")
        return stored

    def _log_bytes(self, data: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            artifact_dir = str(Path(artifact_file).parent)
            self.client.log_artifact(self.run_id, str(path), None if artifact_dir == "." else artifact_dir)

    def running_again(self) -> None:
        """RUNNING again (a resume): what the last attempt ended with is not this one's."""
        tags = self.client.get_run(self.run_id).data.tags
        self.delete_tags([k for k in (names.ERROR, names.REAPED, names.REAPED_AT) if k in tags])
        self.client.update_run(self.run_id, status="RUNNING")

    def end(self, status: str, error: str | None = None) -> None:
        """Close the run with ``status`` (FINISHED, FAILED, KILLED), the ``error`` (redacted) saying why."""
        from mlflow.entities import RunStatus

        if error:
            self.client.set_tag(self.run_id, names.ERROR, redact(error)[:MAX_TAG_LENGTH])
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


def config_text(resolved: Mapping[str, Any]) -> str:
    """The run's resolved config as the YAML it is stored as (:data:`labbook.names.CONFIG`), redacted."""
    import yaml

    return yaml.safe_dump(redact_tree(dict(resolved)), sort_keys=False)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - containers without a passwd entry
        return "unknown"
