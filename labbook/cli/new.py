"""``labbook new DIR``: a project of one's own, ready to train and to test.

It writes a plain Lightning model and datamodule in a package named after DIR, their configs (which join
labbook's: ``labbook train model=NAME datamodule=NAME``), an experiment preset, a test that trains for two
epochs and reads the run back, ``.gitignore`` and a short README. ``labbook train experiment=NAME`` and
``pytest`` pass in it at once; ``docs/your-own-project.md`` says what each file is for.
"""

from __future__ import annotations

import argparse
import keyword
import re
import sys
from pathlib import Path
from typing import Sequence

from labbook.cli.console import run_command
from labbook.errors import UserError

MODEL = '''"""{name}'s model: a small MLP regressor, a plain LightningModule (nothing of labbook's in it)."""

from __future__ import annotations

from typing import Annotated

import pytorch_lightning as pl
import torch
from torch import nn


class Regressor(pl.LightningModule):
    """x (B, n_features) -> ŷ (B,), trained on the mean squared error."""

    def __init__(self, n_features: int, hidden: Annotated[int, ">= 1"] = 32, lr: Annotated[float, "> 0"] = 0.01) -> None:
        """``n_features``: the data's width, given by the datamodule's ``dims``; the rest: the config's keys, with
        these defaults and bounds (``model.hidden=0`` is refused before anything is built)."""
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def _mse(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        loss = self._mse(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.log("val/loss", self._mse(batch), on_epoch=True)  # labbook keeps the best checkpoint by val/loss

    def test_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.log("test/mse", self._mse(batch), on_epoch=True)  # the first test metric: the run's headline

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """For ``labbook predict``: a batch (from the datamodule's ``parse_inputs``) -> predictions."""
        with torch.no_grad():
            return self(x)
'''

DATA = '''"""{name}'s data: y = x·w + noise, generated from a seed; a plain LightningDataModule."""

from __future__ import annotations

from typing import Annotated

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class LinearData(pl.LightningDataModule):
    def __init__(self, n_samples: Annotated[int, ">= 20"] = 2000, n_features: Annotated[int, ">= 1"] = 3,
                 noise: Annotated[float, ">= 0"] = 0.1, batch_size: Annotated[int, ">= 1"] = 64, seed: int = 0) -> None:
        super().__init__()
        self.n_samples, self.n_features, self.noise = n_samples, n_features, noise
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.n_samples, self.n_features, generator=g)
        w = torch.linspace(-1.0, 1.0, self.n_features)
        y = x @ w + self.noise * torch.randn(self.n_samples, generator=g)
        a, b = int(0.7 * self.n_samples), int(0.85 * self.n_samples)
        self.train_set, self.val_set = TensorDataset(x[:a], y[:a]), TensorDataset(x[a:b], y[a:b])
        self.test_set = TensorDataset(x[b:], y[b:])

    @property
    def dims(self) -> dict[str, int]:
        """What the model must know of the data: passed to its constructor by name."""
        return {{"n_features": self.n_features}}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.batch_size)

    def parse_inputs(self, lines: list[str]) -> torch.Tensor:
        """For ``labbook predict``: each line, n_features comma-separated numbers."""
        rows = []
        for i, line in enumerate(lines, start=1):
            values = [v for v in line.split(",") if v.strip()]
            if len(values) != self.n_features:
                raise ValueError(f"input {{i}}: expected {{self.n_features}} comma-separated numbers, got {{line!r}}")
            rows.append([float(v) for v in values])
        return torch.tensor(rows)

    def format_outputs(self, y: torch.Tensor) -> list[str]:
        return [f"{{v:.6g}}" for v in y.tolist()]
'''

MODEL_YAML = """# {name}'s model: the constructor's arguments are its keys, with their defaults (labbook train --cfg job).
_target_: {package}.model.Regressor
"""

DATA_YAML = """# {name}'s data.
_target_: {package}.data.LinearData
seed: ${{seed}}
"""

EXPERIMENT_YAML = """# @package _global_
# labbook train experiment={name}
defaults:
  - override /model: {name}
  - override /datamodule: {name}
logger:
  experiment_name: {name}
trainer:
  max_epochs: 20
"""

TEST = '''"""{name} trains, and labbook records the run: the store read back after two epochs."""

from mlflow.tracking import MlflowClient

import labbook


def test_the_experiment_trains_and_is_recorded(tmp_path):
    store = f"sqlite:///{{tmp_path / 'mlflow.db'}}"
    result = labbook.launch("experiment={name}", "trainer.max_epochs=2", "debug=quiet", tracking_uri=store)
    run = MlflowClient(store).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden"] == "32" and "test/mse" in run.data.metrics
    model, _ = labbook.load(result.run_id, tracking_uri=store)
    assert model.hparams.n_features == 3
'''

PYPROJECT = """# Only what the tests need: the project's folder importable, where they are.
[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
"""

GITIGNORE = """# labbook's store and outputs
mlflow.db
mlartifacts/
logs/
outputs/
multirun/
optuna.db
__pycache__/
"""

README = """# {name}

A labbook project: `{package}/` holds the model and the data (plain Lightning), `conf/` their configs,
which join labbook's own.

```bash
labbook train experiment={name}                       # train, test, record in ./mlflow.db
labbook train experiment={name} model.hidden=64       # any constructor argument is a config key
labbook train -m experiment={name} model.lr=0.01,0.001  # a sweep
labbook compare                                       # the runs side by side
labbook predict RUN_ID 0.1,0.2,0.3                    # answer with a trained run
pytest                                                # trains for two epochs and reads the run back
```
"""


def files(name: str, package: str) -> dict[str, str]:
    """The project's files, by path, for a project ``name`` whose Python package is ``package``."""
    fill = {"name": name, "package": package}
    return {
        f"{package}/__init__.py": "",
        f"{package}/model.py": MODEL.format(**fill),
        f"{package}/data.py": DATA.format(**fill),
        f"conf/model/{name}.yaml": MODEL_YAML.format(**fill),
        f"conf/datamodule/{name}.yaml": DATA_YAML.format(**fill),
        f"conf/experiment/{name}.yaml": EXPERIMENT_YAML.format(**fill),
        f"tests/test_{package}.py": TEST.format(**fill),
        "pyproject.toml": PYPROJECT,
        ".gitignore": GITIGNORE,
        "README.md": README.format(**fill),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labbook new", description="Write a project of one's own: a model, a "
                                "datamodule, their configs, an experiment preset and a test, ready to run.")
    p.add_argument("directory", metavar="DIR", help="the project's folder (new, or empty); its name names the "
                   "package and the configs")
    return p


def package_name(folder: Path) -> str:
    """A Python package name from the folder's: ``my-lab`` -> ``my_lab``."""
    name = re.sub(r"\W+", "_", folder.resolve().name).strip("_").lower() or "project"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"project_{name}"
    return name


def write(folder: Path) -> list[Path]:
    """Write the project into ``folder`` (which must be new or empty): the paths written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder} {'is not a folder' if not folder.is_dir() else 'is not empty'}: labbook new "
                        "writes a project into a new or empty folder")
    package = package_name(folder)
    written = []
    for relative, text in files(package, package).items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(args: Sequence[str]) -> int:
    options = parser().parse_args(list(args))

    def new() -> None:
        folder = Path(options.directory)
        write(folder)
        name = package_name(folder)
        print(f"labbook new: a project in {folder}: cd {folder} && labbook train experiment={name} && pytest",
              file=sys.stderr)

    return run_command(new)
