"""Every run yields an MLflow model (issue 21): logged with its step and metrics, loaded by MLflow's pyfunc with
the answers `labbook predict` prints, served over HTTP, registered from the best of a sweep."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import LABBOOK, labbook, logged_models, run_process
from tests.test_stopping import Watch
from tests.test_train_e2e import artifacts, only_run

QUIET = "debug=quiet"
TINY_DATES = ("datamodule.n_samples=1200", "datamodule.n_test=200", "datamodule.batch_size=32", "trainer.max_epochs=1")
QUESTIONS = ["September 27, 1994", "2/10/93", "TUESDAY, SEPTEMBER 25, 1984"]
IRIS_ROWS = ["5.1,3.5,1.4,0.2", "7.0,3.2,4.7,1.4", "6.3,3.3,6.0,2.5"]


def _csv(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    labels = rng.integers(0, 3, 300)
    x = centers[labels] + rng.normal(size=(300, 3)) * [1.0, 10.0, 0.1]  # the units differ: standardised
    csv = folder / "points.csv"
    csv.write_text("a,b,c,kind\n" + "\n".join(f"{p[0]:.5f},{p[1]:.5f},{p[2]:.5f},k{l}" for p, l in zip(x, labels)))
    return csv


def _windows() -> list[str]:
    import statsmodels.api as sm

    series = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    return [",".join(f"{v:g}" for v in series[i:i + 20]) for i in (0, 150)]


# Each built-in family: the training overrides and inputs in `labbook predict`'s text form.
FAMILIES = {
    "polynomial": (("experiment=polynomial", "trainer.max_epochs=3"), lambda: ["0.5", "1.0", "-2"]),
    "gmm_iris": (("experiment=gmm_iris",), lambda: IRIS_ROWS),
    "gmm_csv": (("datamodule=tabular", "datamodule.label_column=kind", "model.n_components=3",
                 "trainer.max_epochs=10"), lambda: ["0.1,0.2,0.01", "6,60,0", "0,60,6.1"]),
    "lstm": (("experiment=lstm_sunspots", "trainer.max_epochs=2"), _windows),
    "seq2seq": (("experiment=seq2seq_dates", "model.hidden_size=32", *TINY_DATES), lambda: QUESTIONS),
    "transformer": (("experiment=transformer_dates", *TINY_DATES), lambda: QUESTIONS),
}


def pyfunc(uri: str, model_uri: str, given: dict, cwd: Path) -> tuple[list[str], list[str]]:
    """MLflow's pyfunc answers to ``given`` (``{"list": ...}`` or ``{"frame": ...}``) in a fresh process, and the
    signature's input names."""
    out = run_process([sys.executable, str(Path(__file__).with_name("pyfunc_predict.py")), uri, model_uri,
                       json.dumps(given)], timeout=300, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    answers, names, example = out.stdout.strip().splitlines()[-3:]
    rows, answered = json.loads(example)
    assert rows == answered > 0, "the logged input example gets one answer a row"
    return json.loads(answers), json.loads(names)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_familys_model_answers_through_mlflow_as_labbook_predict_does(family: str, tmp_path: Path,
                                                                          store: str) -> None:
    overrides, inputs = FAMILIES[family]
    inputs = inputs()
    csv = _csv(tmp_path) if family == "gmm_csv" else None
    extra = [f"datamodule.path={csv}"] if csv else []
    out = labbook("train", *overrides, *extra, QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    [model] = logged_models(store, run.info.run_id)
    predicted = labbook("predict", run.info.run_id, *inputs, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    expected = predicted.stdout.splitlines()
    assert len(expected) == len(inputs)
    if csv is not None:
        csv.unlink()  # the model holds what it learnt of the data: it answers without it
    if family.startswith("gmm"):  # tabular: the text form as a column, and a DataFrame of the data's columns
        answers, columns = pyfunc(store, f"models:/{model.model_id}", {"frame": {"input": inputs}}, tmp_path)
        assert answers == expected
        assert columns[0] == "input" and len(columns) == 1 + len(inputs[0].split(","))
        rows = [[float(v) for v in line.split(",")] for line in inputs]
        frame = {c: [r[i] for r in rows] for i, c in enumerate(columns[1:])}
        frame = dict(reversed(list(frame.items())))  # by name, not by position
        assert pyfunc(store, f"models:/{model.model_id}", {"frame": frame}, tmp_path)[0] == expected
        if csv is not None:
            assert columns[1:] == ["a", "b", "c"]
    else:  # a list, and a column of strings
        assert pyfunc(store, f"models:/{model.model_id}", {"list": inputs}, tmp_path)[0] == expected
        assert pyfunc(store, f"models:/{model.model_id}", {"frame": {"input": inputs}}, tmp_path)[0] == expected


def test_the_logged_model_carries_its_step_metrics_dataset_signature_and_example(tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=lstm_sunspots", "trainer.max_epochs=12", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    client = MlflowClient(store)
    val = sorted(client.get_metric_history(run.info.run_id, "val/loss"), key=lambda m: m.step)
    best = int(np.argmin([m.value for m in val]))
    [model] = logged_models(store, run.info.run_id)
    assert model.name == "model" and model.source_run_id == run.info.run_id and model.status.name == "READY"
    assert model.tags["labbook.checkpoint"] == "best" and int(model.tags["labbook.epoch"]) == best
    assert [(o.model_id, o.step) for o in client.get_run(run.info.run_id).outputs.model_outputs] == \
        [(model.model_id, best)]
    linked = {m.key: m for m in model.metrics}
    assert linked["val/loss"].value == val[best].value and linked["val/loss"].step == val[best].step
    dataset = client.get_run(run.info.run_id).inputs.dataset_inputs[0].dataset
    assert (linked["val/loss"].dataset_name, linked["val/loss"].dataset_digest) == (dataset.name, dataset.digest)
    # Linking the metric to the model did not add a point to the run's history.
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == len(val) == 12
    assert model.params == run.data.params
    # The checkpoint's bytes once: in the model, not in the run.
    assert "checkpoints/best.ckpt" not in artifacts(client, run.info.run_id)
    import mlflow.models

    info = mlflow.models.get_model_info(f"models:/{model.model_id}")
    assert info.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert info.saved_input_example_info is not None


def test_a_resumed_runs_newer_best_is_a_new_model_of_the_same_run_and_no_validation_logs_the_last(
        tmp_path: Path, store: str) -> None:
    lstm = ("experiment=lstm_sunspots", "trainer.max_epochs=3", "callbacks.checkpoint.last_every_s=0")
    out = labbook("train", *lstm, QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = only_run(store).info.run_id
    out = labbook("train", f"resume={run_id}", "trainer.max_epochs=8", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    val = [m.value for m in sorted(MlflowClient(store).get_metric_history(run_id, "val/loss"), key=lambda m: m.step)]
    first, overall = int(np.argmin(val[:3])), int(np.argmin(val))
    assert overall >= 3, f"val/loss never improved after the resume, nothing is tested: {val}"
    models = sorted(logged_models(store, run_id), key=lambda m: int(m.tags["labbook.epoch"]))
    assert [(m.tags["labbook.checkpoint"], int(m.tags["labbook.epoch"])) for m in models] == \
        [("best", first), ("best", overall)]
    assert sorted(o.step for o in MlflowClient(store).get_run(run_id).outputs.model_outputs) == [first, overall]
    # predict and the registry take the newer one.
    out = labbook("register", run_id[:8], "--name", "sunspots", cwd=tmp_path)
    assert out.returncode == 0 and models[1].model_id in out.stdout, out.stderr

    out = labbook("train", "experiment=polynomial", "trainer.max_epochs=2", "trainer.limit_val_batches=0",
                  "logger.experiment_name=no-validation", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("no-validation").experiment_id])
    [model] = logged_models(store, run.info.run_id)
    assert (model.tags["labbook.checkpoint"], model.tags["labbook.epoch"]) == ("last", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, deadline_s: float = 120.0, proc: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + deadline_s
    while True:
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())
        except OSError:
            assert proc is None or proc.poll() is None, proc.stderr.read() if proc and proc.stderr else "exited"
            assert time.monotonic() < deadline, f"{url} never answered"
            time.sleep(0.5)


def test_served_by_mlflow_and_by_labbook_serve_the_same_answers_and_ctrl_c_leaves_nothing(
        tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=gmm_iris", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = only_run(store)
    [model] = logged_models(store, run.info.run_id)
    expected = labbook("predict", run.info.run_id, *IRIS_ROWS, cwd=tmp_path).stdout.splitlines()

    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    mlflow_serve = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{model.model_id}",
                                     "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                    cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
    try:
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"dataframe_split": {
            "columns": ["input"], "data": [[row] for row in IRIS_ROWS]}}, proc=mlflow_serve)
        assert answer == {"predictions": expected}
    finally:
        os.killpg(mlflow_serve.pid, signal.SIGKILL)
        mlflow_serve.wait()

    port = _free_port()
    serve = subprocess.Popen([LABBOOK, "serve", run.info.run_id[:8], "--port", str(port)], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    watch = Watch(serve.pid, [f"--port {port}"])
    assert serve.stdout.readline().strip() == f"labbook serve: http://127.0.0.1:{port}/invocations"
    assert any("mlflow models serve" in p["cmdline"] for p in watch.look().values())
    assert _post(f"http://127.0.0.1:{port}/invocations", {"inputs": {"input": IRIS_ROWS}}) == {"predictions": expected}
    watch.look()
    serve.send_signal(signal.SIGINT)
    assert serve.wait(timeout=60) == 0 and "labbook serve: stopped" in serve.stderr.read()
    _nothing_left(watch)  # the scoring server and its workers went with it

    # Stopped before the server answered: nothing is left either. (Off loopback: a warning says who can ask it.)
    port = _free_port()
    serve = subprocess.Popen([LABBOOK, "serve", run.info.run_id, "--port", str(port), "--host", "0.0.0.0"], cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    watch = Watch(serve.pid, [f"--port {port}"])
    deadline = time.monotonic() + 120
    while not any("mlflow models serve" in p["cmdline"] for p in watch.look().values()):
        assert time.monotonic() < deadline and serve.poll() is None, "the scoring server never started"
        time.sleep(0.05)
    serve.send_signal(signal.SIGINT)
    serve.wait(timeout=60)
    assert "labbook: warning: --host 0.0.0.0: the model answers anyone who can reach this machine" in serve.stderr.read()
    _nothing_left(watch)


def _nothing_left(watch: Watch) -> None:
    deadline = time.monotonic() + 15
    while watch.left():
        assert time.monotonic() < deadline, watch.left()
        time.sleep(0.2)


def test_register_the_best_of_a_sweep_then_predict_and_serve_it_by_alias(tmp_path: Path, store: str) -> None:
    out = labbook("train", "-m", "experiment=polynomial", "trainer.max_epochs=3", "model.optimizer.lr=0.001,0.05",
                  QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(store)
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                 if r.data.tags.get("sweep.role") == "parent"]
    best = parent.data.tags["sweep.best_run_id"]
    out = labbook("register", parent.info.run_id, "--name", "cubic", "--alias", "champion", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    version = client.get_model_version_by_alias("cubic", "champion")
    [model] = logged_models(store, best)
    assert (str(version.version), version.run_id, version.source) == ("1", best, f"models:/{model.model_id}")
    assert out.stdout.splitlines()[0] == (f"registered cubic version 1 from run {best} (the best of sweep "
                                          f"{parent.info.run_id}) (models:/{model.model_id})")
    by_alias = labbook("predict", "models:/cubic@champion", "0.5", "1.0", cwd=tmp_path)
    assert by_alias.returncode == 0, by_alias.stderr
    assert by_alias.stdout == labbook("predict", best, "0.5", "1.0", cwd=tmp_path).stdout

    # Something without a model: one line, and no registered model left behind.
    out = labbook("train", "experiment=polynomial", "trainer.max_epochs=2", "logger.log_model=none",
                  "logger.experiment_name=no-model", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (bare,) = client.search_runs([client.get_experiment_by_name("no-model").experiment_id])
    out = labbook("register", bare.info.run_id, "--name", "empty", cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "has no MLflow model" in out.stderr
    assert [m.name for m in client.search_registered_models()] == ["cubic"]
    for bad in (["nosuchrun", "--name", "x"], ["models:/nope@champion"], [best, "--name", "x", "--alias", "latest"]):
        out = labbook("register" if "--name" in bad else "predict", *bad, *([] if "--name" in bad else ["1"]),
                      cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr and out.stderr.strip(), bad
    assert [m.name for m in client.search_registered_models()] == ["cubic"]


def test_kept_logs_the_best_and_the_last_each_stored_once_and_a_resume_starts_from_the_model(
        tmp_path: Path, store: str) -> None:
    out = labbook("train", "experiment=polynomial", "trainer.max_epochs=6", "logger.log_model=kept",
                  "callbacks.checkpoint.last_every_s=0", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_id = only_run(store).info.run_id
    client = MlflowClient(store)
    val = [m.value for m in sorted(client.get_metric_history(run_id, "val/loss"), key=lambda m: m.step)]
    best = int(np.argmin(val))
    assert best < 5, f"val/loss fell every epoch {val}: best and last coincide, nothing is tested"
    kinds = sorted((m.tags["labbook.checkpoint"], int(m.tags["labbook.epoch"])) for m in logged_models(store, run_id))
    assert kinds == [("best", best), ("last", 5)]
    assert not {"checkpoints/best.ckpt", "checkpoints/last.ckpt"} & artifacts(client, run_id)  # in the models
    out = labbook("train", f"resume={run_id}", "trainer.max_epochs=8", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in sorted(client.get_metric_history(run_id, "val/loss"), key=lambda m: m.step)] == \
        list(range(8))
    kinds = sorted((m.tags["labbook.checkpoint"], int(m.tags["labbook.epoch"])) for m in logged_models(store, run_id))
    assert ("last", 7) in kinds and len(kinds) in (3, 4)  # a newer best too when the resume improved
