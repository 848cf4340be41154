"""The config groups as the config folders hold them: a group is a folder, its options are its YAML files.

The folders are a project's own (``conf/`` in the working directory, or ``--config-dir DIR``, or
``$LABBOOK_CONFIG_DIR``), then labbook's: a project's options join labbook's, and one of the same name wins
(a team's own ``conf/logger/mlflow.yaml``). Hydra searches them in that order (the search path that
:func:`labbook.config.compose.search_project_configs` sets up, from :func:`config_dirs`), and every `labbook`
process makes the project's code importable (:func:`use_project`).

Read from the file system, without Hydra: Hydra's own listing builds a config repository per group, each
deep-copying the ConfigStore (where labbook's typed schemas live), which took seconds for ``--help``.
``train --help``, tab completion and the check of ``GROUP=OPTION`` overrides all read groups here.
Hydra's own groups (``hydra/launcher``, ``hydra/sweeper``, ...) come from its plugins, not from ``conf/``,
and are left to Hydra.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The project's config folders, os.pathsep-separated, first wins; set by `labbook` for Hydra and for every
# process it starts (a launcher's jobs, DDP workers), or by the user (a cluster job started elsewhere).
ENV_CONFIG_DIR = "LABBOOK_CONFIG_DIR"


def _conf_dir() -> Path:
    """labbook's own configs: ``labbook/conf`` in an installed wheel, ``conf/`` at the top of a checkout (the
    project's design card keeps it there; pyproject.toml maps it into the package)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if packaged.is_dir() else package.parent / "conf"


CONF_DIR = _conf_dir()


def project_dirs() -> list[Path]:
    """The project's own config folders: :data:`ENV_CONFIG_DIR`'s, else ``conf/`` in the working directory
    when there is one (and it is not labbook's own)."""
    given = [Path(p).resolve() for p in os.environ.get(ENV_CONFIG_DIR, "").split(os.pathsep) if p]
    if given:
        return given
    here = (Path.cwd() / "conf").resolve()
    return [here] if here.is_dir() and here != CONF_DIR.resolve() else []


def config_dirs() -> list[Path]:
    """Every config folder, first wins: the project's, then labbook's."""
    return [*project_dirs(), CONF_DIR]


def use_project(config_dir: str | os.PathLike | None = None) -> list[Path]:
    """Make this process, and every process it starts, see the project: its config folders (``config_dir``,
    else :func:`project_dirs`) in :data:`ENV_CONFIG_DIR`, and the folder each sits in (the project's root,
    where its Python package is) importable, first on ``sys.path`` and ``PYTHONPATH`` as ``python -m`` puts
    the working directory. Returns the project's config folders."""
    if config_dir is not None:
        folder = Path(config_dir).resolve()
        if not folder.is_dir():
            from labbook.errors import UserError

            raise UserError(f"--config-dir {config_dir}: no such folder")
        os.environ[ENV_CONFIG_DIR] = os.pathsep.join([str(folder), *map(str, project_dirs())])
    dirs = project_dirs()
    if dirs:
        os.environ[ENV_CONFIG_DIR] = os.pathsep.join(map(str, dirs))
    roots = list(dict.fromkeys([str(Path.cwd().resolve()), *(str(d.parent) for d in dirs)]))
    for root in reversed(roots):
        if root not in sys.path:
            sys.path.insert(0, root)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *(p for p in paths if p)]))
    return dirs


def options(group: str, dirs: list[Path] | None = None) -> list[str]:
    """The options of ``group`` (``model`` -> ``gmm``, ``lstm``, ...) in every config folder, sorted; none for
    a folder that is not a group."""
    if not group or group == "hydra" or group.startswith("hydra/"):
        return []
    found = {p.stem for d in (config_dirs() if dirs is None else dirs) if (d / group).is_dir()
             for p in (d / group).glob("*.yaml")}
    return sorted(found)


def groups(dirs: list[Path] | None = None) -> dict[str, list[str]]:
    """Every group (nested ones as ``a/b``) with its options, by name, over every config folder."""
    dirs = config_dirs() if dirs is None else dirs
    names = {folder.relative_to(d).as_posix() for d in dirs if d.is_dir()
             for folder in d.rglob("*") if folder.is_dir()}
    found = {name: options(name, dirs) for name in sorted(names)}
    return {name: opts for name, opts in found.items() if opts}
