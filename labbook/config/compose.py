"""Composing ``conf/train.yaml`` outside a run, as ``labbook train`` would: for ``train --help`` and for tab
completion, which need the config (or Hydra's own config groups) but no job, no output folder, no store.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence


def task_overrides(hydra_config: Any) -> list[str]:
    """The command line's overrides as typed (``hydra.overrides.task``), interpolations kept: reading the node
    resolves ``key=${oc.env:TOKEN}`` into the secret itself, which a run must never store."""
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.to_container(hydra_config.overrides.task, resolve=False)]


def search_project_configs() -> None:
    """Hydra's search path, wherever labbook composes: the project's config folders
    (:func:`labbook.config.groups.project_dirs`), then labbook's own, each read by
    :class:`labbook.config.source.SignatureConfigSource` (a model's and a datamodule's keys are its
    constructor's). A project's options join labbook's, one of the same name wins. (Hydra's own
    ``--config-dir`` puts a folder after the primary one, where labbook's would win.)"""
    from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    from labbook.config.source import SCHEME, SignatureConfigSource, register_schemas

    class ProjectConfigs(SearchPathPlugin):
        def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
            for folder in config_dirs():  # each before Hydra's "main" (labbook's, as plain files): first wins
                search_path.prepend(provider="labbook", path=f"{SCHEME}://{folder}",
                                    anchor=SearchPathQuery(provider="main"))

    from labbook.config.groups import config_dirs

    register_schemas(config_dirs())
    plugins = Plugins.instance()
    plugins.register(SignatureConfigSource)
    if not any(c.__name__ == "ProjectConfigs" for c in plugins.discover(SearchPathPlugin)):
        plugins.register(ProjectConfigs)


@contextlib.contextmanager
def hydra_for_train() -> Iterator[Any]:
    """Hydra set up on ``conf/`` with labbook's schemas registered; yields its ``Hydra`` object (its
    ``compose_config`` and ``config_loader``). Leaves no global Hydra behind."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from labbook.config import schemas
    from labbook.config.groups import CONF_DIR

    schemas.register()
    search_project_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="train"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        yield hydra


def compose_train(hydra: Any, overrides: Sequence[str]) -> Any:
    """``conf/train.yaml`` composed with ``overrides``, the ``hydra`` node included; overrides are judged as on
    the command line (``from_shell``: the same messages as a run's)."""
    from hydra.types import RunMode

    from labbook.config.signature import complete

    cfg = hydra.compose_config("train", overrides=list(overrides), run_mode=RunMode.RUN, from_shell=True)
    complete(cfg)  # the model's and datamodule's keys and defaults, from their constructors
    return cfg


@contextlib.contextmanager
def composed_once() -> Iterator[None]:
    """Hydra composes a command's config twice: first to read ``hydra.mode`` from it (composed as for a
    multirun: sweep values allowed, missing groups skipped), then for the job (~0.17 s each here). Inside
    this context the job's composition reuses the first one wherever it is the same config: the same config
    name and overrides, no sweep value among them (a single run refuses those, with Hydra's own advice), no
    config group left missing (a single run must say so), and no ``hydra.mode: MULTIRUN`` from the config.
    Anything else is composed again, as Hydra does."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from labbook.config.signature import complete

    original = ConfigLoaderImpl.load_configuration
    first: dict[str, Any] = {}

    def reusable(cfg: Any, overrides: Sequence[str]) -> bool:
        choices = cfg.hydra.runtime.choices
        return (cfg.hydra.mode != RunMode.MULTIRUN
                and not any(OmegaConf.is_missing(choices, key) for key in choices)
                and not any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(list(overrides))))

    def load_configuration(self: Any, config_name: Any, overrides: list[str], run_mode: RunMode,
                           from_shell: bool = True, validate_sweep_overrides: bool = True) -> Any:
        # Hydra appends hydra.mode=RUN to the first composition's overrides when the config states no mode.
        before = first.get("overrides", ())
        added = tuple(overrides[len(before):]) if tuple(overrides[:len(before)]) == before else None
        reuse = (run_mode == RunMode.RUN and first.get("call") == (config_name, from_shell)
                 and added in ((), ("hydra.mode=RUN",)) and reusable(first["cfg"], overrides))
        if reuse:
            cfg = first["cfg"]
            if added:
                cfg.hydra.mode = RunMode.RUN
                cfg.hydra.overrides.hydra.append(added[0])
        else:
            cfg = original(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
            complete(cfg)  # the model's and datamodule's keys and defaults, from their constructors
        first.clear()  # handed over at most once: the job goes on to change its config
        if run_mode == RunMode.MULTIRUN and not validate_sweep_overrides:  # Hydra's get_mode
            first.update(call=(config_name, from_shell), overrides=tuple(overrides), cfg=cfg)
        return cfg

    ConfigLoaderImpl.load_configuration = load_configuration  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = original  # type: ignore[method-assign]
