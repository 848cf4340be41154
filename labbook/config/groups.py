"""labbook's config groups as ``conf/`` holds them: a group is a folder, its options are its YAML files.

Read from the file system, without Hydra: Hydra's own listing builds a config repository per group, each
deep-copying the ConfigStore (where labbook's typed schemas live), which took seconds for ``--help``.
``train --help``, tab completion and the check of ``GROUP=OPTION`` overrides all read groups here.
Hydra's own groups (``hydra/launcher``, ``hydra/sweeper``, ...) come from its plugins, not from ``conf/``,
and are left to Hydra.
"""

from __future__ import annotations

from pathlib import Path

def _conf_dir() -> Path:
    """labbook's own configs: ``labbook/conf`` in an installed wheel, ``conf/`` at the top of a checkout (the
    project's design card keeps it there; pyproject.toml maps it into the package)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"


CONF_DIR = _conf_dir()


def options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of ``group`` (``model`` -> ``gmm``, ``lstm``, ...), sorted; none for a folder that is not
    a group of labbook's."""
    folder = conf_dir / group
    if not group or group == "hydra" or group.startswith("hydra/") or not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))


def groups(conf_dir: Path = CONF_DIR) -> dict[str, list[str]]:
    """Every labbook group (nested ones as ``a/b``) with its options, by name."""
    found = {}
    for folder in sorted(p for p in conf_dir.rglob("*") if p.is_dir()):
        name = folder.relative_to(conf_dir).as_posix()
        names = options(name, conf_dir)
        if names:
            found[name] = names
    return found
