"""Bad configs, files and arguments: a non-zero exit, one line naming what is wrong, no run left RUNNING."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import labbook, runs

# (name, overrides, file to write into the working dir or None, words the one line must contain)
CASES = [
    ("misspelled key", ["model.n_componets=3"], None, ["model.n_componets", "unknown config key", "n_components"]),
    ("negative n_components", ["model.n_components=-3"], None, ["model.n_components=-3", "integer ≥ 1"]),
    ("unknown covariance type", ["model.covariance_type=weird"], None, ["model.covariance_type='weird'", "'diag'"]),
    ("max_epochs=-1", ["trainer.max_epochs=-1"], None, ["trainer.max_epochs=-1", "≥ 1"]),
    ("wrong type", ["model.tol=abc"], None, ["model.tol", "abc"]),
    ("unknown group option", ["model=nosuch"], None, ["model/nosuch", "gmm"]),
    ("unknown root key", ["epochs=3"], None, ["epochs", "unknown config key"]),
    ("gpu on a machine without one", ["trainer=gpu"], None, ["trainer.accelerator='gpu'", "trainer=cpu"]),
    ("bad precision", ["trainer.precision=8"], None, ["trainer.precision='8'", "bf16-mixed"]),
    ("csv path missing from config", ["datamodule=tabular"], None, ["datamodule.path", "missing"]),
    ("missing csv file", ["datamodule=tabular", "datamodule.path=nope.csv"], None, ["nope.csv"]),
    ("empty csv file", ["datamodule=tabular", "datamodule.path=empty.csv"], ("empty.csv", b""), ["empty.csv", "empty"]),
    ("non-numeric cell", ["datamodule=tabular", "datamodule.path=bad.csv"],
     ("bad.csv", b"a,b\n1,2\n3,oops\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(40))), ["bad.csv", "oops", "b"]),
    ("binary file", ["datamodule=tabular", "datamodule.path=blob.csv"], ("blob.csv", bytes(range(256)) * 8), ["blob.csv"]),
    ("unknown label column", ["datamodule=tabular", "datamodule.path=ok.csv", "datamodule.label_column=species"],
     ("ok.csv", b"a,b\n" + b"".join(b"%d,%d\n" % (i, 2 * i) for i in range(60))), ["ok.csv", "species"]),
]


@pytest.mark.parametrize("name,overrides,file,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path: Path, store: str, name: str, overrides: list[str],
                                     file: tuple[str, bytes] | None, words: list[str]) -> None:
    if file:
        (tmp_path / file[0]).write_bytes(file[1])
    out = labbook("train", "debug=quiet", "trainer.max_epochs=2", *overrides, cwd=tmp_path)  # the bad one last
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("labbook: error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == errors[0]
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert not [r for r in runs(store) if r.info.status == "RUNNING"]
    assert not runs(store), "nothing should have started for a bad config or file"


def test_full_error_shows_the_traceback(tmp_path: Path, store: str) -> None:
    out = labbook("train", "model.n_components=-3", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_unknown_command_and_usage(tmp_path: Path) -> None:
    out = labbook("fly", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command 'fly'" in out.stderr
    assert labbook("--help", cwd=tmp_path).stdout.startswith("usage: labbook")
    helptext = labbook("train", "--help", cwd=tmp_path)
    assert helptext.returncode == 0 and "== Config groups" in helptext.stdout and "experiment: " in helptext.stdout
