"""``labbook train --help``: rendered by labbook from conf/ and one compose (Hydra's took seconds), with the
text of Hydra's ``hydra.help`` in conf/hydra/default.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from labbook.config.groups import CONF_DIR, groups
from tests.conftest import labbook


def test_train_help_lists_groups_config_and_the_texts_of_conf(tmp_path: Path) -> None:
    out = labbook("train", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    help_cfg = yaml.safe_load((CONF_DIR / "hydra" / "default.yaml").read_text())["help"]
    text = out.stdout
    assert text.startswith(help_cfg["header"])
    assert text.rstrip("\n").endswith(help_cfg["footer"].rstrip("\n"))
    listed = text.split("== Config groups (choose with GROUP=OPTION) ==\n", 1)[1].split("\n== Composed config", 1)[0]
    assert listed.splitlines() == [f"{g}: {', '.join(o)}" for g, o in sorted(groups().items())]
    assert "model: gmm, lstm, polynomial, seq2seq, transformer" in listed and "schema/" not in text
    composed = yaml.safe_load(text.split("== Composed config (override with KEY=VALUE) ==\n", 1)[1].split("\n\n")[0])
    assert composed["model"]["_target_"] == "labbook.lightning_modules.gmm.GaussianMixtureEM" and "hydra" not in composed
    assert composed["paths"]["output_dir"] == "${hydra:runtime.output_dir}"  # unresolved, as Hydra shows it


def test_train_help_composes_the_overrides(tmp_path: Path) -> None:
    out = labbook("train", "model=lstm", "model.hidden_size=7", "--help", cwd=tmp_path)
    composed = yaml.safe_load(out.stdout.split("(override with KEY=VALUE) ==\n", 1)[1].split("\n\n")[0])
    assert composed["model"]["_target_"] == "labbook.lightning_modules.lstm.LSTMForecaster"
    assert composed["model"]["hidden_size"] == 7


def test_train_help_with_a_bad_override_is_one_line(tmp_path: Path) -> None:
    out = labbook("train", "model=nosuch", "--help", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("labbook: error: model='nosuch' is not an option of the model group")


def test_hydra_help_stays_hydras(tmp_path: Path) -> None:
    out = labbook("train", "--hydra-help", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("Hydra (") and "== Flags ==" in out.stdout
