"""labbook as a user gets it: a wheel built from this checkout, installed into a fresh venv, used from an empty
directory and from a project of one's own (its own models, a datamodule in a local package named
``datamodules``, a preset, a search, and a team default that replaces labbook's), then ``labbook new``.

The venv is new and holds the wheel alone; its dependencies are this environment's (a ``.pth`` line points at
its site-packages, not read as a site directory: labbook's own editable install there stays invisible), and
``pip check`` says the wheel's requirements are met. ``LABBOOK_FRESH_INSTALL=full`` installs them from the
package registries instead, torch from the wheel on this disk (~2.5 min more; run before a release).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, kill_group, run_process, runs
from tests.test_completion import bash_complete

FULL = os.environ.get("LABBOOK_FRESH_INSTALL") == "full"
QUIET = ("debug=quiet", "trainer.max_epochs=2")


class Venv:
    def __init__(self, root: Path) -> None:
        self.root, self.bin = root, root / "bin"

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell with the venv activated: nothing of this checkout's or this test run's."""
        drop = {"PYTHONPATH", "HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI", "LABBOOK_CONFIG_DIR", "VIRTUAL_ENV"}
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST")}
        return {**env, "PATH": f"{self.bin}{os.pathsep}{env['PATH']}", "VIRTUAL_ENV": str(self.root),
                "PYTHONWARNINGS": "ignore", **extra}

    def run(self, *command: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None,
            ok: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        tool = str(self.bin / command[0]) if (self.bin / command[0]).exists() else command[0]
        done = run_process([tool, *command[1:]], cwd=cwd, timeout=timeout, env=env or self.env(), stdin=stdin)
        if ok:
            assert done.returncode == 0, f"{' '.join(command)}: exit {done.returncode}\n{done.stderr[-3000:]}"
        return done

    def labbook(self, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
        return self.run("labbook", *args, cwd=cwd, **kwargs)


def checkout_copy(into: Path) -> Path:
    """The working tree as it is (tracked and untracked files git does not ignore): the wheel is built from a
    copy, so no build/ lands in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, into / name)
    return into


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    work = tmp_path_factory.mktemp("install")
    source = checkout_copy(work / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((work / "dist").glob("labbook-*.whl"))
    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    made = Venv(root)
    pip = ["python", "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if FULL:
        import torch

        made.run(*pip, f"torch=={torch.__version__.split('+')[0]}", str(wheel), "pytest", cwd=work, timeout=1800)
    else:
        site = Path(made.run("python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                             cwd=work).stdout.strip())
        (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        made.run(*pip, "--no-deps", str(wheel), cwd=work)
        checked = made.run("python", "-m", "pip", "check", cwd=work, ok=False).stdout.splitlines()
        assert not [line for line in checked if line.startswith("labbook ")], checked  # its requirements are met
    where = made.run("python", "-c", "import labbook, labbook.lightning_modules.gmm as m; print(labbook.__file__); "
                     "print(m.__file__)", cwd=work).stdout.split()
    assert all(p.startswith(str(root)) for p in where), f"labbook was imported from {where}, not the venv"
    return made


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_new(uri: str, seen: set[str]) -> list:
    found = [r for r in runs(uri) if r.info.run_id not in seen]
    seen.update(r.info.run_id for r in found)
    return found


INSTALLED_FILES = """
import pathlib, labbook, hydra_plugins.labbook_optuna_sweeper as sweeper
root = pathlib.Path(labbook.__file__).parent
plugins = pathlib.Path(sweeper.__file__).parent.parent  # the wheel's own hydra_plugins (labbook_*)
for path in [*root.rglob("*.py"), *root.rglob("*.yaml"), *plugins.glob("labbook_*/**/*.py")]:
    print(path.relative_to(root.parent))
"""


def test_the_wheel_holds_every_module_and_config_of_the_checkout(venv: Venv, tmp_path: Path) -> None:
    """Where the checkout's top-level folders go in the wheel: lightning_modules/ -> labbook/lightning_modules/,
    datamodules/ -> labbook/datamodules/, conf/ -> labbook/conf/ (pyproject.toml's package list)."""
    placed = {"lightning_modules": "labbook/lightning_modules", "datamodules": "labbook/datamodules",
              "conf": "labbook/conf"}
    expected = set()
    for top in ("labbook", "hydra_plugins", *placed):
        for path in (REPO / top).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                relative = path.relative_to(REPO).as_posix()
                expected.add(placed[top] + relative[len(top):] if top in placed else relative)
    installed = set(venv.run("python", "-c", INSTALLED_FILES, cwd=tmp_path).stdout.split())
    assert expected - installed == set(), "not in the wheel"
    assert installed - expected == set(), "in the wheel, not in the checkout"


def test_the_wheel_serves_every_command_from_an_empty_directory(venv: Venv, tmp_path: Path) -> None:
    assert "train" in venv.labbook("--help", cwd=tmp_path).stdout
    assert "gmm" in venv.labbook("train", "--help", cwd=tmp_path).stdout
    venv.labbook("train", "experiment=gmm_iris", *QUIET, cwd=tmp_path)
    venv.labbook("train", "-m", "experiment=gmm_blobs", "model.n_components=2,3", *QUIET, cwd=tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sorted(r.info.status for r in runs(uri)) == ["FINISHED"] * 3
    sweep = venv.labbook("compare", cwd=tmp_path).stdout
    assert "model.n_components" in sweep and len(sweep.strip().splitlines()) >= 4
    offered, _ = bash_complete("labbook train model=", env=venv.env(), cwd=tmp_path)
    assert {"gmm", "lstm", "transformer"} <= set(offered)
    port = free_port()
    with subprocess.Popen([str(venv.bin / "labbook"), "ui", "--port", str(port)], cwd=tmp_path, env=venv.env(),
                          start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as ui:
        try:
            deadline, status = time.monotonic() + 120, None
            while time.monotonic() < deadline and status is None and ui.poll() is None:
                try:
                    status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status
                except OSError:
                    time.sleep(0.5)
            assert status == 200
        finally:
            kill_group(ui.pid, 2)
            ui.wait(timeout=60)
            kill_group(ui.pid)


NETS = '''
"""Two models of a project's own: plain Lightning, nothing of labbook's."""
from typing import Annotated

import pytorch_lightning as pl
import torch
from torch import nn


class _Regression(pl.LightningModule):
    def _loss(self, batch):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", self._loss(batch))
        self.log("val/mae", (self(x) - y).abs().mean())

    def test_step(self, batch, batch_idx):
        self.log("test/mse", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class MLP(_Regression):
    def __init__(self, n_features: int, hidden: Annotated[int, ">= 1"] = 16, lr: Annotated[float, "> 0"] = 0.02):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def predict(self, x):
        with torch.no_grad():
            return self(x)


class Linear(_Regression):  # no predict(): labbook predict says so
    def __init__(self, n_features: int, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(n_features, 1)

    def forward(self, x):
        return self.net(x).squeeze(-1)
'''

WAVE = '''
"""A datamodule in the project's own package named datamodules (the name labbook's repository uses too)."""
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class Wave(pl.LightningDataModule):
    def __init__(self, n_samples: int = 300, n_features: int = 2, batch_size: int = 50, seed: int = 0):
        super().__init__()
        self.n_samples, self.n_features, self.batch_size, self.seed = n_samples, n_features, batch_size, seed

    @property
    def dims(self):
        return {"n_features": self.n_features}

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(self.seed)
        x = torch.rand(self.n_samples, self.n_features, generator=g) * 2 - 1
        y = torch.sin(3 * x).sum(-1)
        a, b = self.n_samples * 7 // 10, self.n_samples * 85 // 100
        self.parts = [TensorDataset(x[s], y[s]) for s in (slice(0, a), slice(a, b), slice(b, None))]

    def train_dataloader(self):
        return DataLoader(self.parts[0], batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self):
        return DataLoader(self.parts[1], batch_size=self.batch_size)

    def test_dataloader(self):
        return DataLoader(self.parts[2], batch_size=self.batch_size)

    def parse_inputs(self, lines):
        return torch.tensor([[float(v) for v in line.split(",")] for line in lines])

    def format_outputs(self, y):
        return [f"{v:.6f}" for v in y.tolist()]
'''

CONFIGS = {
    "model/mlp.yaml": "_target_: models.nets.MLP\n",
    "model/linear.yaml": "_target_: models.nets.Linear\n",
    "datamodule/wave.yaml": "_target_: datamodules.wave.Wave\nseed: ${seed}\n",
    "experiment/wave.yaml": """\
        # @package _global_
        defaults:
          - override /model: mlp
          - override /datamodule: wave
        trainer:
          max_epochs: 3
        """,
    "hparams_search/wave.yaml": """\
        # @package _global_
        defaults:
          - override /experiment: wave
          - override /hydra/sweeper: optuna
        optimized_metric: val/loss
        direction: minimize
        hydra:
          mode: MULTIRUN
          sweeper:
            n_trials: 2
            params:
              model.hidden: range(2, 9)
        """,
    # A group of the project's own, which nothing composes until a command line adds it.
    "schedule/short.yaml": """\
        # @package _global_
        trainer:
          max_epochs: 1
        """,
    # A team's default in place of labbook's own option of the same name.
    "logger/mlflow.yaml": """\
        defaults:
          - /schema/logger/mlflow@_here_
          - _self_
        tags:
          team: wave-lab
        system_metrics: false
        """,
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name, text in {"models/__init__.py": "", "models/nets.py": NETS, "datamodules/__init__.py": "",
                       "datamodules/wave.py": WAVE, ".gitignore": "mlflow.db\nmlruns/\noutputs/\nmultirun/\n",
                       **{f"conf/{k}": textwrap.dedent(v) for k, v in CONFIGS.items()}}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text.lstrip("\n"))
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"]):
        subprocess.run(["git", *command], cwd=root, check=True)
    return root


def head(root: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def test_a_project_of_ones_own(venv: Venv, project: Path) -> None:
    uri, seen = f"sqlite:///{project / 'mlflow.db'}", set()
    client = MlflowClient(uri)
    listed = venv.labbook("train", "--help", cwd=project).stdout
    assert all(name in listed for name in ("mlp", "linear", "wave", "gmm"))
    offered, _ = bash_complete("labbook train model=", env=venv.env(), cwd=project)
    assert {"mlp", "linear", "gmm"} <= set(offered)
    offered, _ = bash_complete("labbook train model=mlp model.h", env=venv.env(), cwd=project)
    assert offered == ["model.hidden="]

    # The preset: the project's classes, their constructors' defaults, the team's logger option, the git state.
    out = venv.labbook("train", "experiment=wave", cwd=project)
    (run,) = only_new(uri, seen)
    assert run.info.status == "FINISHED" and run.data.params["model.hidden"] == "16"
    assert run.data.params["model._target_"] == "models.nets.MLP"
    assert run.data.tags["team"] == "wave-lab" and run.data.tags["git.commit"] == head(project)
    assert run.data.tags["git.dirty"] == "false" and "site-packages" in run.data.tags["labbook.installed_from"]
    assert "val/mae=" in out.stdout and f"test/mse: {run.data.metrics['test/mse']:.6g}" in out.stdout
    assert "the best checkpoint is the one with the lowest val/loss" in out.stderr  # chosen, said, recorded
    assert run.data.tags["checkpoint.monitor"] == "val/loss"

    # The same checks as for labbook's own models.
    for override, line in (("model.hidden=0", "model.hidden=0 is not allowed: expected an integer ≥ 1"),
                           ("model.hiden=3", "model.hiden: unknown config key (allowed keys: n_features, hidden, lr)"),
                           ("model=nope", "model='nope' is not an option of the model group"),
                           ("schedule=short", "schedule=short: the group schedule is not in the defaults list "
                                              "(conf/train.yaml's or a preset's): add it with +schedule=short")):
        bad = venv.labbook("train", "experiment=wave", override, cwd=project, ok=False)
        assert bad.returncode != 0 and line in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert not only_new(uri, seen)

    # A sweep across the two models, compared; a search over one's own key.
    swept = venv.labbook("train", "-m", "experiment=wave", "model=mlp,linear", *QUIET, cwd=project)
    children = only_new(uri, seen)
    best = min(children, key=lambda r: r.data.metrics["val/loss"])  # the objective: the monitor labbook chose
    assert f"minimize val/loss; best: model={best.data.params['model._target_'].rsplit('.', 1)[1].lower()}" \
        in swept.stdout
    assert sorted(r.data.params["model._target_"] for r in children) == ["models.nets.Linear", "models.nets.MLP"]
    table = venv.labbook("compare", cwd=project).stdout
    assert all(r.info.run_id[:8] in table for r in children) and "model._target_" in table
    venv.labbook("train", "hparams_search=wave", "trainer.max_epochs=2", cwd=project)
    trials = only_new(uri, seen)
    assert len(trials) == 2 and all(2 <= int(t.data.params["model.hidden"]) <= 8 for t in trials)

    # Changed code, committed: diff says the code differs.
    linear_before = next(r for r in children if r.data.params["model._target_"] == "models.nets.Linear")
    nets = project / "models" / "nets.py"
    nets.write_text(nets.read_text().replace("nn.Tanh()", "nn.ReLU()"))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "relu"], cwd=project,
                   check=True)
    trained = venv.labbook("train", "experiment=wave", "model=linear", *QUIET, cwd=project)
    assert "labbook: note: the run's MLflow model cannot answer inputs: models.nets.Linear has no predict(x)" \
        in trained.stderr
    (linear_after,) = only_new(uri, seen)
    diff = venv.labbook("diff", linear_before.info.run_id[:8], linear_after.info.run_id[:8], cwd=project).stdout
    assert "different commits" in diff and head(project) in diff

    # Resumed by a short id: the same run, one epoch more.
    short = linear_after.info.run_id[:6]
    venv.labbook("train", f"resume={short}", "trainer.max_epochs=3", cwd=project)
    assert not only_new(uri, seen)
    history = client.get_metric_history(linear_after.info.run_id, "train/loss")
    assert client.get_run(linear_after.info.run_id).info.status == "FINISHED" and len(history) == 3

    # Answers from a stored run, as many as inputs; a model without predict() is one line naming what it lacks.
    mlp = next(r for r in children if r.data.params["model._target_"] == "models.nets.MLP").info.run_id[:8]
    answers = venv.labbook("predict", mlp, "0.5,0.25", "-1,1", cwd=project).stdout.split()
    assert len(answers) == 2 and all(abs(float(a)) < 10 for a in answers)
    again = venv.labbook("predict", mlp, cwd=project, stdin="0.5,0.25\n-1,1\n").stdout.split()
    assert again == answers
    # The run's MLflow model, loaded by MLflow's pyfunc from the installed wheel outside the project (it carries
    # the project's models/ package), answers the same.
    pyfunc = venv.run("python", "-c", "import sys, mlflow.pyfunc, mlflow; mlflow.set_tracking_uri(sys.argv[1]); "
                      "m = mlflow.pyfunc.load_model(sys.argv[2]); "
                      "print(*m.predict(['0.5,0.25', '-1,1']))", uri, _model_uri(client, mlp), cwd=project.parent)
    assert pyfunc.stdout.split() == answers
    lacking = venv.labbook("predict", short, "0.5,0.25", cwd=project, ok=False)
    assert lacking.returncode != 0 and lacking.stderr.strip().splitlines() == [
        "labbook: error: models.nets.Linear has no predict(x), which labbook predict calls (docs/contract.md)"]


def _model_uri(client: MlflowClient, run_prefix: str) -> str:
    (run,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
              if r.info.run_id.startswith(run_prefix)]
    (model,) = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    return f"models:/{model.model_id}"


def test_configs_elsewhere_by_flag_or_environment(venv: Venv, project: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    venv.labbook("train", "--config-dir", str(project / "conf"), "experiment=wave", "+schedule=short", "debug=quiet",
                 cwd=tmp_path)
    venv.labbook("train", "experiment=wave", "model=linear", *QUIET, cwd=tmp_path,
                 env=venv.env(LABBOOK_CONFIG_DIR=str(project / "conf")))
    found = runs(uri)
    assert sorted(r.data.params["model._target_"] for r in found) == ["models.nets.Linear", "models.nets.MLP"]
    assert all(r.info.status == "FINISHED" and r.data.tags["team"] == "wave-lab" for r in found)
    assert sorted(r.data.params["trainer.max_epochs"] for r in found) == ["1", "2"]  # +schedule=short: 1
    missing = venv.labbook("train", "--config-dir", str(tmp_path / "nowhere"), cwd=tmp_path, ok=False)
    assert missing.returncode != 0 and "--config-dir" in missing.stderr and "no such folder" in missing.stderr


def test_labbook_new_trains_and_its_test_passes(venv: Venv, tmp_path: Path) -> None:
    venv.labbook("new", "demo", cwd=tmp_path)
    demo = tmp_path / "demo"
    out = venv.labbook("train", "experiment=demo", "trainer.max_epochs=2", cwd=demo)
    assert "test/mse:" in out.stdout
    (run,) = runs(f"sqlite:///{demo / 'mlflow.db'}")
    assert run.info.status == "FINISHED" and run.data.params["model._target_"] == "demo.model.Regressor"
    tested = venv.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=demo,
                      env=venv.env(PYTEST_ADDOPTS=""))
    assert "1 passed" in tested.stdout


def test_old_runs_targets_move_to_labbook_and_a_projects_own_stay(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs recorded before the wheel placed the built-in packages inside labbook name them at the top level;
    they are read at their new place, a project's own ``datamodules`` package is not."""
    from labbook.config.contract import current_targets

    (tmp_path / "datamodules").mkdir()
    (tmp_path / "datamodules" / "__init__.py").write_text("")
    (tmp_path / "datamodules" / "wave.py").write_text("class Wave:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "datamodules" or m.startswith("datamodules.")]:
        monkeypatch.delitem(sys.modules, name)
    stored = {"model": {"_target_": "lightning_modules.gmm.GaussianMixtureEM", "optimizer": None},
              "datamodule": {"_target_": "datamodules.wave.Wave"},
              "callbacks": [{"_target_": "datamodules.tabular.CSVDataModule"}, {"_target_": "torch.nn.Linear"}]}
    assert current_targets(stored) == {  # labbook's old datamodules.tabular is not the project's: it moved
        "model": {"_target_": "labbook.lightning_modules.gmm.GaussianMixtureEM", "optimizer": None},
        "datamodule": {"_target_": "datamodules.wave.Wave"},
        "callbacks": [{"_target_": "labbook.datamodules.tabular.CSVDataModule"}, {"_target_": "torch.nn.Linear"}]}
