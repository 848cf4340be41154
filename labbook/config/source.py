"""How Hydra reads labbook's config folders and a project's: YAML files, as Hydra's own ``file://`` source
reads them, except that an option of the model or datamodule group (``model/mine.yaml`` naming its class in
``_target_``) is composed onto a schema made from that class's constructor (:mod:`labbook.config.signature`).
So every argument is a key with its default from the start: ``model.hidden=64`` overrides it, a misspelt key
or a wrong type is one line naming what is allowed, and nobody writes a schema by hand.

The folders are searched as ``labbook://DIR`` (:func:`labbook.config.compose.search_project_configs`): the
project's first, then labbook's own.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_store import ConfigStore
from hydra.plugins.config_source import ConfigResult
from omegaconf import DictConfig, OmegaConf, open_dict

from labbook.config.signature import GROUPS, schema

SCHEME = "labbook"


class SignatureConfigSource(FileConfigSource):
    """Hydra's file source, with a constructor's schema under each model and datamodule option."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        result = super().load_config(config_path)
        path = PurePosixPath(self._normalize_file_name(config_path))
        cfg, group = result.config, str(path.parent)
        if group in GROUPS and isinstance(cfg, DictConfig) and "defaults" not in cfg and "_target_" in cfg \
                and not OmegaConf.is_interpolation(cfg, "_target_"):
            with open_dict(cfg):  # the schema register_schemas() stored under the option's name
                cfg.defaults = [f"/schema/{group}/{path.stem}@_here_", "_self_"]
        return result


def register_schemas(dirs: list[Path]) -> None:
    """Store, before Hydra composes, the schema of every model and datamodule option in ``dirs`` (the first
    folder holding an option name wins, as in the search path): Hydra looks a schema up as soon as it reads
    the option's defaults."""
    import yaml

    done: set[tuple[str, str]] = set()
    for folder in dirs:
        for group in GROUPS:
            for path in sorted((folder / group).glob("*.yaml")) if (folder / group).is_dir() else []:
                if (group, path.stem) in done:
                    continue
                done.add((group, path.stem))
                try:
                    text = yaml.safe_load(path.read_text()) or {}
                except (OSError, yaml.YAMLError):
                    continue  # Hydra says what is wrong with it, if it is used
                target = text.get("_target_") if isinstance(text, dict) else None
                if isinstance(target, str) and "${" not in target and "defaults" not in text:
                    ConfigStore.instance().store(group=f"schema/{group}", name=path.stem, node=schema(target))
