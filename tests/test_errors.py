"""Bad configs, files and arguments: a non-zero exit, one line naming what is wrong, no run left RUNNING."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import LABBOOK, kill_group, labbook, runs

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: trainer=gpu is no error here")
CELLS = b"".join(b"%d,%d,%d\n" % (i, i, i) for i in range(40))
# A column of values that float64 holds and float32 (what the rows are trained in) does not: its sum overflows.
HUGE = b"alpha,huge\n" + b"".join(b"%d,%.0e\n" % (i, (i % 9 + 1) * 1e306) for i in range(40))

# (name, overrides, file to write into the working dir or None, words the one line must contain): the key or
# file, the value, and what is allowed.
CASES = [
    ("misspelled key", ["model.n_componets=3"], None,
     ["model.n_componets", "unknown config key", "allowed keys:", "n_components", "covariance_type"]),
    ("negative n_components", ["model.n_components=-3"], None, ["model.n_components=-3", "is not allowed", "an integer ≥ 1"]),
    ("unknown covariance type", ["model.covariance_type=weird"], None,
     ["model.covariance_type='weird'", "expected one of 'full', 'diag', 'spherical', 'tied'"]),
    ("max_epochs=-1", ["trainer.max_epochs=-1"], None, ["trainer.max_epochs=-1", "≥ 1"]),
    ("wrong type", ["model.tol=abc"], None, ["model.tol='abc'", "could not be converted to Float"]),
    ("unknown group option", ["model=nosuch"], None,
     ["model='nosuch' is not an option of the model group", "expected one of gmm, lstm, polynomial, seq2seq, transformer"]),
    ("misspelled optional preset", ["experiment=gmm_iriss"], None,
     ["experiment='gmm_iriss' is not an option of the experiment group", "gmm_iris", "lstm_sunspots"]),
    ("misspelled debug preset", ["debug=fasst"], None, ["debug='fasst'", "expected one of fast, quiet"]),
    ("misspelled option in a sweep", ["-m", "experiment=polynomial,nosuch"], None, ["experiment='nosuch'", "polynomial"]),
    ("unknown root key", ["epochs=3"], None, ["epochs: unknown config key", "allowed keys:", "trainer", "seed"]),
    pytest.param("gpu on a machine without one", ["trainer=gpu"], None,
                 ["trainer.accelerator='gpu'", "no CUDA GPU", "trainer=cpu", "trainer=ddp_cpu"], marks=NO_GPU,
                 id="gpu on a machine without one"),
    ("bad precision", ["trainer.precision=8"], None, ["trainer.precision='8'", "32-true", "bf16-mixed"]),
    ("csv path missing from config", ["datamodule=tabular"], None,
     ["datamodule.path is required and has no value: add datamodule.path=VALUE (the CSV file to read)"]),
    ("two options without -m", ["model=gmm,lstm"], None,
     ["Ambiguous value for argument 'model=gmm,lstm'", "add -m to sweep over the values", "key=[a,b]", "key='a,b'"]),
    ("a value with a space, unquoted", ["logger.experiment_name=my", "run"], None,
     ["Error parsing override 'run'", "a value with spaces needs quotes: key='two words'"]),
    ("missing csv file", ["datamodule=tabular", "datamodule.path=nope.csv"], None, ["datamodule", "nope.csv: no such file"]),
    ("empty csv file", ["datamodule=tabular", "datamodule.path=empty.csv"], ("empty.csv", b""),
     ["empty.csv", "empty file (no header row)"]),
    ("non-numeric cell", ["datamodule=tabular", "datamodule.path=bad.csv"],
     ("bad.csv", b"alpha,beta,gamma\n1,2,3\n4,5,6\n7,oops,9\n" + CELLS),
     ["bad.csv", "row 4, column 'beta'", "'oops' is not a number"]),
    ("empty cell", ["datamodule=tabular", "datamodule.path=hole.csv"],
     ("hole.csv", b"alpha,beta,gamma\n1,2,3\n4,5,\n" + CELLS), ["hole.csv", "row 3, column 'gamma'", "an empty cell"]),
    ("ragged row", ["datamodule=tabular", "datamodule.path=ragged.csv"],
     ("ragged.csv", b"alpha,beta\n1,2\n3,4,5\n" + CELLS), ["ragged.csv", "row 3 has 3 cells, the header has 2"]),
    ("binary file", ["datamodule=tabular", "datamodule.path=blob.csv"], ("blob.csv", bytes(range(256)) * 8),
     ["blob.csv", "binary file (NUL byte at offset 0)"]),
    ("unknown label column", ["datamodule=tabular", "datamodule.path=ok.csv", "datamodule.label_column=species"],
     ("ok.csv", b"alpha,beta\n" + b"".join(b"%d,%d\n" % (i, 2 * i) for i in range(60))),
     ["ok.csv", "label_column 'species' is not a column", "columns are: alpha, beta"]),
    ("two columns of one name", ["datamodule=tabular", "datamodule.path=twice.csv"],
     ("twice.csv", b"alpha,beta,alpha\n" + CELLS), ["twice.csv", "columns 1 and 3 are both named 'alpha'"]),
    ("values beyond float32", ["datamodule=tabular", "datamodule.path=huge.csv"], ("huge.csv", HUGE),
     ["huge.csv", "row 2, column 'huge'", "'1e+306' is beyond float32's range"]),
    ("non-ASCII value, unquoted", ["logger.experiment_name=実験"], None,
     ["Error parsing override 'logger.experiment_name=実験'", "character '実' at position 24",
      "needs quotes", """'logger.experiment_name="実験"'"""]),
    ("value with spaces and a '!', unquoted", ["logger.run_name=two words!"], None,
     ["Error parsing override 'logger.run_name=two words!'", "character '!' at position 26", "needs quotes",
      """'logger.run_name="two words!"'"""]),
    ("value with '=', unquoted", ["logger.run_name=a b=c"], None,
     ["Error parsing override 'logger.run_name=a b=c'", "mismatched input '='", """'logger.run_name="a b=c"'"""]),
    # 40 rows: 28 training rows (70/10/20), fewer than the 50 components asked for; refused with the data's
    # dims, before a run is opened.
    ("more components than training rows", ["datamodule=tabular", "datamodule.path=small.csv", "model.n_components=50"],
     ("small.csv", b"alpha,beta,gamma\n" + CELLS), ["n_components=50", "28 training rows"]),
    ("more components than generated training rows", ["experiment=gmm_blobs", "datamodule.n_samples=40",
                                                       "model.n_components=50"], None,
     ["n_components=50 needs at least 50 training rows", "28 training rows"]),
    ("bad date file line", ["experiment=seq2seq_dates", "datamodule.path=dates.txt"],
     ("dates.txt", b"%-29s_1993-02-10\n%-29s_2003-13-19\n" % (b"2/10/93", b"Aug 19, 2003")),
     ["dates.txt, line 2", "answer '2003-13-19' is not an ISO date"]),
]


@pytest.mark.parametrize("name,overrides,file,words", CASES, ids=[c[0] if isinstance(c, tuple) else c.id for c in CASES])
def test_bad_input_is_one_clear_line(tmp_path: Path, store: str, name: str, overrides: list[str],
                                     file: tuple[str, bytes] | None, words: list[str]) -> None:
    if file:
        (tmp_path / file[0]).write_bytes(file[1])
    out = labbook("train", "debug=quiet", "trainer.max_epochs=2", *overrides, cwd=tmp_path)  # the bad one last
    assert out.returncode == 1, (out.returncode, out.stderr[-2000:])
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
    assert out.returncode == 1 and "Traceback" in out.stderr and "model.n_components=-3" in out.stderr


def test_unknown_command_and_usage(tmp_path: Path) -> None:
    out = labbook("fly", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command 'fly'" in out.stderr
    assert labbook("--help", cwd=tmp_path).stdout.startswith("usage: labbook")
    helptext = labbook("train", "--help", cwd=tmp_path)
    assert helptext.returncode == 0 and "== Config groups" in helptext.stdout and "experiment: " in helptext.stdout


@pytest.mark.parametrize("standardize", ["true", "false"])
def test_values_beyond_float32_are_one_line_without_numpy_warnings(tmp_path: Path, store: str, standardize: str) -> None:
    (tmp_path / "huge.csv").write_bytes(HUGE)
    # RuntimeWarnings shown, as a user sees them (numpy's overflow warnings are RuntimeWarnings).
    out = labbook("train", "debug=quiet", "trainer.max_epochs=2", "datamodule=tabular", "datamodule.path=huge.csv",
                  f"datamodule.standardize={standardize}", cwd=tmp_path,
                  env={"PYTHONWARNINGS": "ignore,default::RuntimeWarning"})
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-3000:]
    assert out.stderr.startswith("labbook: error: datamodule (labbook.datamodules.tabular.CSVDataModule): huge.csv: row 2, "
                                 "column 'huge': '1e+306' is beyond float32's range"), out.stderr
    assert not runs(store)


def predict_env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in {**os.environ, "PYTHONWARNINGS": "ignore", **extra}.items() if k != "HYDRA_FULL_ERROR"}


def test_predict_answers_each_input_once_and_checks_the_run_first(tmp_path: Path, store: str) -> None:
    # One argv word holding a space (as a shell passes 'logger.run_name=two words'): Hydra reads it as one
    # value, so this is no error.
    trained = labbook("train", "debug=quiet", "trainer.max_epochs=2", "logger.run_name=two words", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = runs(store)
    assert run.info.run_name == "two words"
    rid = run.info.run_id
    good = labbook("predict", rid, "1,2", "3,4", cwd=tmp_path)
    assert good.returncode == 0 and len(good.stdout.splitlines()) == 2, good.stderr

    blank = labbook("predict", rid, "1,2", "", "3,4", cwd=tmp_path)
    assert (blank.returncode, blank.stdout) == (1, ""), blank.stdout
    assert blank.stderr.strip().splitlines() == [
        "labbook: error: input 2 of 3 (an argument) is blank: each input needs a value, and gets one answer"]
    piped = labbook("predict", rid, cwd=tmp_path, stdin="1,2\n \n3,4\n")
    assert (piped.returncode, piped.stdout) == (1, "")
    assert piped.stderr.strip().splitlines() == [
        "labbook: error: stdin line 2 is blank: each input needs a value (one a line), and gets one answer"]
    piped = labbook("predict", rid, cwd=tmp_path, stdin="1,2\n3,4\n")
    assert piped.returncode == 0 and piped.stdout == good.stdout

    # An unknown run with no inputs: the run is what is wrong, said before stdin is read (it stays open here).
    unknown = "0123456789abcdef0123456789abcdef"
    proc = subprocess.Popen([LABBOOK, "predict", unknown], cwd=tmp_path, env=predict_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        kill_group(proc.pid)
        proc.stdin.close()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert code == 1 and out == "", (code, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"labbook: error: run {unknown!r} not found"), err
    assert [r.info.run_id for r in runs(store)] == [rid]


def test_predict_names_the_counts_when_a_datamodule_answers_another_number(tmp_path: Path, store: str) -> None:
    (tmp_path / "miscount.py").write_text(
        "from labbook.datamodules.tabular import BlobsDataModule\n\n\n"
        "class OneAnswerShort(BlobsDataModule):\n"
        "    def format_outputs(self, y):\n"
        "        return super().format_outputs(y)[:-1]\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    trained = labbook("train", "debug=quiet", "trainer.max_epochs=2", "datamodule._target_=miscount.OneAnswerShort",
                      cwd=tmp_path, env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = runs(store)
    out = labbook("predict", run.info.run_id, "1,2", "3,4", "5,6", cwd=tmp_path, env=env)
    assert (out.returncode, out.stdout) == (1, ""), out.stdout
    assert out.stderr.strip().splitlines() == [(
        "labbook: error: miscount.OneAnswerShort.format_outputs gave 2 answers for 3 inputs; predict prints exactly "
        "one answer per input")]
