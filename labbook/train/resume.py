"""``labbook train resume=RUN_ID [OVERRIDES]``: continue a stored run where its last checkpoint left it.

The run is rebuilt from the store alone (its resolved config, its overrides and its last checkpoint),
so a run stopped on one machine resumes on another. What a resume may change is what does not make it a
different experiment: how long and on what hardware it trains (``trainer.*``, ``threads``), whether it is
tested, and how it is recorded (``logger.*`` but its names). The effect of the new overrides is found by
composing the run's own overrides with and without them, so a preset, a group choice (``trainer=ddp_cpu``)
and a single key are judged alike.
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from labbook import names
from labbook.errors import UserError

# Dotted prefixes a resume may change; anything else differing is refused.
RESUMABLE = ("trainer.", "threads", "test", "logger.tags", "logger.flush_every_s", "logger.heartbeat_s",
             "logger.server_patience_s", "logger.log_checkpoints", "logger.checkpoint_upload_every_s",
             "logger.system_metrics", "logger.tracking_uri", "callbacks.early_stopping.", "paths.")


@dataclasses.dataclass
class ResumePlan:
    run_id: str
    number: int  # 1 for a run's first resume
    config: dict[str, Any]  # the resolved config to train with (ckpt_path: the localised last.ckpt)
    overrides: list[str]  # this resume's command-line overrides
    all_overrides: list[str]  # the run's overrides so far, this resume's appended
    changes: dict[str, list[Any]]  # key -> [stored value, new value]
    checkpoint: dict[str, int]  # where the run continues from: Position's fields
    # Each metric's last step already in the store: the steps trained again after the last checkpoint (a run
    # killed after a metrics flush) are not stored twice.
    stored_steps: dict[str, int] = dataclasses.field(default_factory=dict)


def describe_resumable() -> str:
    """What a resume may change, for error messages."""
    return ", ".join(p.rstrip(".") + (".*" if p.endswith(".") else "") for p in RESUMABLE)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):  # a leaf that became a subtree (strategy: auto -> {...})
            tree[part] = {}
        tree = tree[part]
    tree[leaf] = value


def _delete(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.get(part)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def allowed(key: str) -> bool:
    """Whether a resume may change the dotted config key ``key``."""
    return any(key == p.rstrip(".") or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE)


def plan_resume(uri: str, run_id: str, new_overrides: list[str], compose: Callable[[list[str]], dict[str, Any]],
                checkpoint_dir: Path) -> ResumePlan:
    """Check everything a resume needs, in the order a user needs it, and download the checkpoints.

    ``compose(overrides)`` returns the resolved config ``labbook train OVERRIDES`` would run with. Nothing is
    written to the store but, last, this process's claim on the run (:func:`labbook.run.owners.claim`): a
    refused resume leaves the run as it was.
    """
    from labbook.config.contract import current_targets
    from labbook.store.read import open_reader

    reader = open_reader(uri)
    try:
        run = reader.find_run(run_id)
        _check_resumable(reader, run)
        config, old_overrides = current_targets(reader.config(run)), reader.overrides(run)
    except UserError as exc:
        raise UserError(f"resume={run_id}: {exc}") from None
    composed, after, changes = _changes(run_id, config, old_overrides, new_overrides, compose)
    for key in changes:  # keys the new composition lacks go first: a leaf may have become a subtree
        if key not in after:
            _delete(config, key)
    for key in changes:
        if key in after:
            _set(config, key, after[key])
    config["paths"] = composed["paths"]  # this attempt's directories
    _unmask(config, after)

    download = checkpoint_dir / ".download"
    from labbook.store.models import stored_checkpoint

    last = localise_checkpoint(stored_checkpoint(reader, run, "last", download), checkpoint_dir)
    best = stored_checkpoint(reader, run, "best", download)  # where the restored checkpoint callback expects it
    if best is not None:
        best.replace(checkpoint_dir / Path(names.BEST_CHECKPOINT).name)
    config["ckpt_path"] = str(last)
    config.pop("resume", None)
    position = _check_position(run_id, config, changes, last, finished=run.status == "FINISHED")
    from labbook.run.owners import claim

    try:  # last, once everything is checked: of two resumes started together, exactly one goes on
        claim(uri, run)
    except UserError as exc:
        raise UserError(f"resume={run_id}: {exc}") from None
    return ResumePlan(run.run_id, int(run.tags.get(names.RESUMES, "0")) + 1, config, list(new_overrides),
                      [*old_overrides, *new_overrides], changes, dataclasses.asdict(position), dict(run.metric_steps))


def _unmask(config: dict[str, Any], composed: Mapping[str, Any]) -> None:
    """A secret is stored masked (``***``: :mod:`labbook.redact`); the resumed run takes it again from where
    its overrides say (``${oc.env:TOKEN}``), in this environment."""
    from labbook.config.keys import flatten
    from labbook.redact import MASK

    for key, value in flatten(config).items():
        if isinstance(value, str) and MASK in value and composed.get(key) not in (None, value):
            _set(config, key, composed[key])


def _check_resumable(reader: Any, run: Any) -> None:
    """A run can be resumed once nothing owns it and it stored a last checkpoint."""
    if run.status == "RUNNING":
        raise UserError(f"the run is still RUNNING (process {run.tags.get(names.OWNER_PID, '?')} on "
                        f"{run.tags.get(names.OWNER_HOST, '?')}); stop it first, or `labbook reap` if that process "
                        "is gone")
    from labbook.store.models import has_checkpoint

    if not has_checkpoint(reader, run, "last"):
        raise UserError(f"the run has no {names.LAST_CHECKPOINT} to resume from (trained with "
                        "logger.log_checkpoints=false or callbacks.checkpoint.enabled=false, or it ended before "
                        "its first epoch did)")


def _changes(run_id: str, config: dict[str, Any], old: list[str], new: list[str],
             compose: Callable[[list[str]], dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[Any]]]:
    """The config ``old + new`` overrides compose to (as it is, and flattened), and each key the new overrides
    change: ``key -> [stored value, new value]``; a change a resume may not make is refused."""
    from labbook.config.keys import flatten

    try:
        composed = compose([*old, *new])
        before, after = flatten(compose(old)), flatten(composed)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the run's overrides no longer compose with today's conf/
        from labbook.errors import one_line

        raise UserError(f"resume={run_id}: its overrides {old} no longer compose: {one_line(exc)}") from exc
    changes = {k: [config_value(config, k, before.get(k)), after.get(k)]
               for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}
    refused = [k for k in changes if not allowed(k)]
    if refused:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
        raise UserError(f"resume={run_id}: {shown} cannot change on a resume (that is a different experiment: "
                        f"start a new run); a resume may change {describe_resumable()}")
    _check_schedule(run_id, config, changes)
    return composed, after, changes


def _check_schedule(run_id: str, config: Mapping[str, Any], changes: Mapping[str, list[Any]]) -> None:
    """A model whose learning-rate schedule is fitted to the run's length (it declares which of its options
    does that: :attr:`labbook.config.contract.Model.schedule_fixed_by`) cannot be trained longer."""
    from hydra.utils import get_class

    from labbook.config.contract import model_traits

    longer = [k for k in ("trainer.max_epochs", "trainer.max_steps") if k in changes
              and isinstance(changes[k][1], int) and (changes[k][1] == -1 or changes[k][1] > (changes[k][0] or 0))]
    option = model_traits(get_class(config["model"]["_target_"])).schedule_fixed_by if longer else None
    if option and config_value(config, f"model.{option}", False):
        raise UserError(f"resume={run_id}: {longer[0]} cannot grow ({changes[longer[0]][0]!r} -> "
                        f"{changes[longer[0]][1]!r}): model.{option}=true fits its learning-rate schedule to the "
                        "run's original length; resume with the same length to finish an interrupted run, or "
                        f"train a new run (model.{option}=false runs can be trained further)")


def _check_position(run_id: str, config: Mapping[str, Any], changes: Mapping[str, Any], last: Path,
                    finished: bool = False) -> "Position":
    """Where the last checkpoint stands, checked against the resume's limits and hardware; a run that
    ``finished`` with nothing left to train is refused (it would only be tested again)."""
    import torch

    position = checkpoint_position(torch.load(last, map_location="cpu", weights_only=True))
    limit = config_value(config, "trainer.max_epochs", -1)
    steps = config_value(config, "trainer.max_steps", -1)
    needed = position.epochs + (1 if position.batches else 0)  # an interrupted epoch must be finished
    done = (isinstance(limit, int) and 0 <= limit <= position.epochs) or (
        isinstance(steps, int) and 0 < steps <= position.global_step)
    if finished and not position.batches and done:
        raise UserError(f"resume={run_id}: the run FINISHED and has trained {position.describe()}: nothing is left to "
                        f"train; give trainer.max_epochs={position.epochs + 1} or more to train it further")
    if isinstance(limit, int) and 0 <= limit < needed:
        raise UserError(f"resume={run_id}: trainer.max_epochs={limit} is not allowed: the run has already trained "
                        f"{position.describe()} (its last checkpoint); give trainer.max_epochs={needed} or more")
    moved = [k for k in changes if k.startswith(("trainer.devices", "trainer.num_nodes"))]
    if position.batches and moved:
        raise UserError(f"resume={run_id}: {moved[0]} cannot change now: the run stopped in the middle of an epoch "
                        f"({position.describe()}) with {position.world_size} process(es), and only the same "
                        "processes can finish that epoch's share of the data; resume without changing it")
    return position


@dataclasses.dataclass
class Position:
    """Where a checkpoint stands: complete epochs, and batches of the next one when it was written mid-epoch."""

    epochs: int
    batches: int = 0
    world_size: int = 1
    global_step: int = 0

    def describe(self) -> str:
        text = f"{self.epochs} epoch{'s' * (self.epochs != 1)}"
        batches = f"{self.batches} batch{'es' * (self.batches != 1)}"
        return text + (f" and {batches} of epoch {self.epochs + 1}" if self.batches else "")


def checkpoint_position(state: Mapping[str, Any]) -> Position:
    """The :class:`Position` of a Lightning checkpoint: from its fit loop's progress and, for one written in
    the middle of an epoch, its training loader's state (:class:`labbook.datamodules.sharding.ResumableLoader`)."""
    fit = state.get("loops", {}).get("fit_loop", {})
    epochs = fit.get("epoch_progress", {}).get("current", {})
    done = int(epochs.get("processed", int(state.get("epoch", -1)) + 1))
    position = Position(done, global_step=int(state.get("global_step", 0)))
    loaders = fit.get("state_dict", {}).get("combined_loader") or []
    if int(epochs.get("started", done)) > done and loaders:
        position.batches = int(loaders[0].get("batches_done", 0))
        position.world_size = int(loaders[0].get("world_size", 1))
    return position


def config_value(config: Mapping[str, Any], dotted: str, default: Any) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def localise_checkpoint(downloaded: Path, checkpoint_dir: Path, target: Path | None = None) -> Path:
    """Write ``downloaded`` as ``checkpoint_dir/last.ckpt`` (or ``target``: another rank's own copy) with its
    checkpoint callbacks' paths moved to ``checkpoint_dir``.

    Lightning reloads a ModelCheckpoint's best score and paths only when the stored ``dirpath`` is the one it
    writes to; the run wrote to a directory of its own attempt (possibly on another machine), so the stored
    state is moved to this attempt's directory, where best.ckpt is put beside it.
    """
    import torch

    state = torch.load(downloaded, map_location="cpu", weights_only=True)
    for key, cb in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and cb.get("dirpath"):
            state["callbacks"][key] = moved_checkpoint_state(cb, str(checkpoint_dir))
    target = target or checkpoint_dir / Path(names.LAST_CHECKPOINT).name
    torch.save(state, target)
    downloaded.unlink(missing_ok=True)
    return target


def moved_checkpoint_state(state: Mapping[str, Any], new_dir: str) -> dict[str, Any]:
    """A ModelCheckpoint callback's stored state with its folder (``dirpath``) and the paths in it moved to
    ``new_dir``: Lightning restores its best score and paths only when the folder is the one it writes to."""
    old_dir = str(state["dirpath"])

    def move(path: Any) -> Any:
        return new_dir + path[len(old_dir):] if isinstance(path, str) and path.startswith(old_dir) else path

    state = {**state, "dirpath": new_dir}
    for field in ("best_model_path", "last_model_path", "kth_best_model_path"):
        if field in state:
            state[field] = move(state[field])
    if "best_k_models" in state:
        state["best_k_models"] = {move(p): v for p, v in state["best_k_models"].items()}
    return state


def resume_record(plan: ResumePlan) -> str:
    """The YAML stored as ``config/resume-N.yaml``: what this resume changed and where it started."""
    return yaml.safe_dump({
        "resume": plan.number,
        "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "overrides": plan.overrides,
        "changes": {k: {"from": v[0], "to": v[1]} for k, v in plan.changes.items() if not k.startswith("paths.")},
        "from_checkpoint": plan.checkpoint,
    }, sort_keys=False)
