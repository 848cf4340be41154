#!/usr/bin/env python3
"""Set up (once) and run: ``python3 dev.py train [OVERRIDES]`` or ``python3 dev.py test [PYTEST ARGS]``.

Needs only Python ≥ 3.10. The first call creates ``.venv`` and installs labbook with its test extras;
later calls skip that unless ``pyproject.toml`` changed. PyTorch is chosen for the machine: the default
(CUDA) build where an NVIDIA GPU is present, else the CPU release this project is tested with. Override
with ``LABBOOK_TORCH="torch==X.Y"``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".labbook-setup"
CPU_TORCH = "torch==2.13.0"
PACKAGES = ("labbook", "lightning_modules", "datamodules", "hydra_plugins")


def torch_spec() -> str:
    if os.environ.get("LABBOOK_TORCH"):
        return os.environ["LABBOOK_TORCH"]
    return "torch" if shutil.which("nvidia-smi") else CPU_TORCH


def setup() -> None:
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + torch_spec().encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and PY.exists():
        return
    if not PY.exists():
        print(f"dev.py: creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    has_torch = subprocess.run([str(PY), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        print(f"dev.py: installing {torch_spec()}", flush=True)
        subprocess.run([*pip, torch_spec()], check=True)
    print("dev.py: installing labbook and its dependencies", flush=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(want)


def show_hydra_plugins() -> None:
    """Hydra finds plugins (labbook's ``hydra/sweeper=optuna``) by listing the ``hydra_plugins`` namespace with
    ``pkgutil``, which cannot list what setuptools' editable install serves through its import hook (the
    package-dir mapping in pyproject.toml makes it use one; hydra#3252). A link to the checkout's
    ``hydra_plugins/``, on ``sys.path`` by a ``.pth`` file, makes it listable; the wheel needs none of this."""
    shown = VENV / "labbook-hydra-plugins"
    link = shown / "hydra_plugins"
    if not link.exists():
        shown.mkdir(exist_ok=True)
        link.symlink_to(ROOT / "hydra_plugins", target_is_directory=True)
    written = VENV.glob("lib*/python*/site-packages/labbook-hydra-plugins.pth")
    if any(p.read_text().strip() == str(shown) for p in written):
        return  # done by an earlier call: no interpreter started to ask where site-packages is
    purelib = subprocess.run([str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    pth = Path(purelib) / "labbook-hydra-plugins.pth"
    if not pth.exists() or pth.read_text().strip() != str(shown):
        pth.write_text(f"{shown}\n")


def compile_sources() -> None:
    """Byte-compile labbook's own packages, as a non-editable install would. An editable install is compiled
    by Python on first import, unless PYTHONDONTWRITEBYTECODE is set (as in CI here): then every command
    would compile ~10,000 lines again (~0.2 s). Incremental: only changed files are compiled."""
    subprocess.run([str(PY), "-m", "compileall", "-q", *(str(ROOT / pkg) for pkg in PACKAGES)], check=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("setup", "train", "test"):
        print(__doc__.strip())
        return 2
    try:
        setup()
    except subprocess.CalledProcessError as exc:
        print(f"dev.py: set-up failed: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        return 1
    show_hydra_plugins()
    compile_sources()
    command, rest = argv[0], argv[1:]
    if command == "setup":
        return 0
    if command == "train":
        return subprocess.call([str(BIN / "labbook"), "train", *(rest or ["experiment=gmm_blobs"])], cwd=ROOT)
    return subprocess.call([str(PY), "-m", "pytest", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
