"""A team store for real: `labbook server` on a PostgreSQL cluster it starts, eight jobs four at a time
(joblib) recording into it over HTTP, then the same sweep straight into PostgreSQL; everything read back. A run's
MLflow model makes the whole round trip through that server: logged, loaded, registered, served."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from labbook.store.postgres import cluster, free_port
from tests.conftest import LABBOOK, kill_group, labbook, logged_models, run_process, stop, store_has
from tests.test_stopping import Watch
from tests.test_sweeps import parent_and_children
from tests.test_train_e2e import QUIET

RATES = ("0.001", "0.002", "0.003", "0.004", "0.005", "0.006", "0.007", "0.008")
SWEEP = ("train", "-m", "experiment=polynomial", "trainer.max_epochs=5", f"model.optimizer.lr={','.join(RATES)}",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", QUIET)


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)


def assert_eight_complete_jobs(uri: str) -> None:
    parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and len(children) == 8
    assert sorted(c.data.params["model.optimizer.lr"] for c in children) == list(RATES)
    client = MlflowClient(tracking_uri=uri)
    for child in children:
        assert child.info.status == "FINISHED"
        for key in ("train/loss", "val/loss"):  # every epoch's value arrived
            assert [m.step for m in client.get_metric_history(child.info.run_id, key)] == [0, 1, 2, 3, 4]
        stored = {a.path for folder in ("", "checkpoints", "config", "plots")
                  for a in client.list_artifacts(child.info.run_id, folder or None)}
        assert {"checkpoints/last.ckpt", "config/config.yaml", "plots/fit.png"} <= stored
        assert "checkpoints/best.ckpt" not in stored  # its model holds it: stored once
        assert [m.tags["labbook.checkpoint"] for m in logged_models(uri, child.info.run_id)] == ["best"]
    summary = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert "sweep/summary.csv" in summary


@pytest.fixture
def team_server(tmp_path: Path):  # noqa: ANN201
    port = free_port()
    # Not under tmp_path: pytest's folders are private to their user, and as root the cluster runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="labbook-team-"))
    proc = subprocess.Popen([LABBOOK, "server", "--local-postgres", str(data), "--pg-port",
                             str(free_port()), "--port", str(port), "--artifacts-destination", str(tmp_path / "art")],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)
        yield url, proc
    finally:
        try:
            stop(proc, timeout=60)
        finally:
            shutil.rmtree(data, ignore_errors=True)


def test_eight_jobs_four_at_a_time_into_a_team_server_on_postgresql(tmp_path: Path, team_server: tuple) -> None:
    url, server = team_server
    out = labbook(*SWEEP, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": url})
    assert out.returncode == 0, out.stderr[-3000:]
    assert_eight_complete_jobs(url)
    # The artifacts went through the server into its destination (each best checkpoint once, in its run's
    # model); no job wrote a local store.
    assert len(list((tmp_path / "art").rglob("best.ckpt"))) == 8
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    server.send_signal(signal.SIGINT)  # Ctrl-C stops the server and its PostgreSQL cleanly
    assert server.wait(timeout=60) == 0
    assert "labbook server: stopped" in server.stderr.read()


# A fresh interpreter that knows nothing of labbook's commands: MLflow alone loads the model and answers.
LOAD_AND_PREDICT = """import json, sys
import mlflow.pyfunc
print(json.dumps(list(mlflow.pyfunc.load_model(sys.argv[1]).predict(sys.argv[2:]))))"""


def test_a_runs_model_round_trips_through_the_team_server(tmp_path: Path, team_server: tuple) -> None:
    url, _ = team_server
    env = {"MLFLOW_TRACKING_URI": url}
    out = labbook("train", "experiment=polynomial", "trainer.max_epochs=3", QUIET, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(tracking_uri=url)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"

    # Logged: one model, linked to the run at its checkpoint's epoch, stored through the server (an
    # mlflow-artifacts: location) in the server's destination; the run keeps last.ckpt but not its own best.ckpt.
    (model,) = logged_models(url, run_id)
    model_id = model.model_id
    assert model.tags["labbook.checkpoint"] == "best" and model.artifact_location.startswith("mlflow-artifacts:")
    assert [(o.model_id, o.step) for o in client.get_run(run_id).outputs.model_outputs] == [
        (model_id, int(model.tags["labbook.epoch"]))]
    assert {f.path for f in client.list_logged_model_artifacts(model_id, "artifacts")} == {
        "artifacts/best.ckpt", "artifacts/config.yaml"}
    assert {a.path for a in client.list_artifacts(run_id, "checkpoints")} == {"checkpoints/last.ckpt"}
    (stored,) = (tmp_path / "art").rglob("best.ckpt")  # the checkpoint's bytes, once, in the model
    assert stored.relative_to(tmp_path / "art").parts[1:3] == ("models", model_id)
    local = Path(run.data.tags["paths.checkpoint_dir"]) / "best.ckpt"  # what the run wrote
    assert stored.read_bytes() == local.read_bytes()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()

    # Loaded: `labbook predict RUN` (the checkpoint downloaded from the model through the server) and MLflow's
    # pyfunc in a fresh process elsewhere answer alike.
    predicted = labbook("predict", run_id, "0.5", "1.0", cwd=tmp_path, env=env)
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    answers = predicted.stdout.splitlines()
    assert len(answers) == 2 and all(math.isfinite(float(a)) for a in answers), predicted.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    loaded = run_process([sys.executable, "-c", LOAD_AND_PREDICT, f"models:/{model_id}", "0.5", "1.0"], timeout=300,
                         cwd=elsewhere, env={**os.environ, "PYTHONWARNINGS": "ignore", **env})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == answers
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # no local store, no copy left behind

    # Registered in the server's PostgreSQL registry, with its alias; the alias answers the same.
    registered = labbook("register", run_id, "--name", "cubic", "--alias", "champion", cwd=tmp_path, env=env)
    assert registered.returncode == 0, registered.stderr[-3000:]
    assert registered.stdout.splitlines()[0] == (f"registered cubic version 1 from run {run_id} "
                                                 f"(models:/{model_id})")
    version = client.get_model_version_by_alias("cubic", "champion")  # over REST, its source names the model
    assert (version.version, version.source, version.run_id) == ("1", f"models:/{model_id}", run_id)
    by_alias = labbook("predict", "models:/cubic@champion", "0.5", "1.0", cwd=tmp_path, env=env)
    assert (by_alias.returncode, by_alias.stdout.splitlines()) == (0, answers), by_alias.stderr[-3000:]

    # Served: MLflow's scoring server on the registered version answers the same; Ctrl-C stops it and all it
    # started.
    port = free_port()
    serve = subprocess.Popen([LABBOOK, "serve", "models:/cubic@champion", "--port", str(port)], cwd=tmp_path,
                             env={**os.environ, "PYTHONWARNINGS": "ignore", **env}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    watch = Watch(serve.pid, [f"--port {port}"])
    try:
        line = serve.stdout.readline()
        assert line == f"labbook serve: http://127.0.0.1:{port}/invocations\n", (
            line, serve.stderr.read() if serve.poll() is not None else "")
        assert any("mlflow models serve" in p["cmdline"] for p in watch.look().values())
        request = urllib.request.Request(line.split(": ", 1)[1].strip(), method="POST",
                                         data=json.dumps({"inputs": ["0.5", "1.0"]}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read()) == {"predictions": answers}
        watch.look()
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0
        assert watch.left() == []
        err = serve.stderr.read()
        assert f"serving cubic version 1 (models:/{model_id}) from {url}" in err
        assert err.strip().splitlines()[-1] == "labbook serve: stopped (SIGINT)", err[-3000:]
    finally:
        kill_group(serve.pid)
        for pid in list(watch.seen):
            kill_group(pid)


def test_a_sweep_straight_into_postgresql(tmp_path: Path) -> None:
    with cluster() as pg:
        uri = pg.database("team")
        out = labbook(*SWEEP, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 0, out.stderr[-3000:]
        assert_eight_complete_jobs(uri)


def test_a_server_with_basic_auth_refuses_strangers_and_no_secret_is_recorded(tmp_path: Path) -> None:
    import secrets
    import urllib.error

    password, token = f"pw-{secrets.token_hex(8)}", f"tok-{secrets.token_hex(8)}"
    port = free_port()
    proc = subprocess.Popen([LABBOOK, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'backend.db'}", "--auth",
                             "--port", str(port), "--artifacts-destination", str(tmp_path / "art")], cwd=tmp_path,
                            env={**os.environ, "LABBOOK_ADMIN_PASSWORD": password}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc)
        with pytest.raises(urllib.error.HTTPError) as refused:  # no credentials, no runs
            urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
        assert refused.value.code == 401

        # A job with credentials records its run; one puts a password in its URI and a token in a tag.
        out = labbook("train", "experiment=polynomial", "trainer.max_epochs=3",
                      f"logger.tracking_uri=http://admin:{password}@127.0.0.1:{port}",
                      "+logger.tags.note=${oc.env:TEAM_API_TOKEN}", QUIET, cwd=tmp_path,
                      env={"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password,
                           "TEAM_API_TOKEN": token})
        assert out.returncode == 0, out.stderr[-3000:]
        os.environ.update({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password})
        try:
            (run,) = MlflowClient(tracking_uri=url).search_runs(["1"])
        finally:
            for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                os.environ.pop(key)
        assert run.info.status == "FINISHED" and run.data.tags["note"] == "***"
        assert run.data.params["logger.tracking_uri"] == f"http://admin:***@127.0.0.1:{port}"
        assert password not in out.stdout + out.stderr
        # Neither secret anywhere in the store: its database and every artifact the server keeps.
        stored = [tmp_path / "backend.db", *(p for p in (tmp_path / "art").rglob("*") if p.is_file())]
        assert len(stored) > 5
        for path in stored:
            data = path.read_bytes()
            assert password.encode() not in data and token.encode() not in data, path
    finally:
        stop(proc, timeout=60)


def test_a_run_waits_out_a_server_restart_and_gives_up_past_its_patience(tmp_path: Path) -> None:
    backend, port = tmp_path / "backend.db", free_port()
    url = f"http://127.0.0.1:{port}"

    def start_server() -> subprocess.Popen:
        proc = subprocess.Popen([LABBOOK, "server", "--backend-store-uri", f"sqlite:///{backend}", "--port", str(port),
                                 "--artifacts-destination", str(tmp_path / "art")], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        wait_until_up(url, proc)
        return proc

    def train(*args: str) -> subprocess.Popen:
        return subprocess.Popen([LABBOOK, "train", "experiment=polynomial", "logger.flush_every_s=1", *args, QUIET],
                                cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONWARNINGS": "ignore"},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def logging(runs_logging: int) -> bool:
        return store_has(backend, "SELECT 1 FROM (SELECT DISTINCT run_uuid FROM metrics WHERE key = 'val/loss') "
                                  f"LIMIT 1 OFFSET {runs_logging - 1}")

    server = start_server()
    first = train("trainer.max_epochs=600")
    second = None
    try:
        # 1. The server stops while the run trains, stays away ~10 s, and comes back on the same port.
        deadline = time.time() + 120
        while not logging(1):
            assert time.time() < deadline and first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.3)
        stop(server)
        time.sleep(10)
        server = start_server()
        out, err = first.communicate(timeout=400)
        assert first.returncode == 0, err[-3000:]
        assert "is not answering; retrying for up to 300 s" in err and "nothing was lost" in err
        (run,) = MlflowClient(tracking_uri=url).search_runs(["1"])
        assert run.info.status == "FINISHED"
        steps = [m.step for m in MlflowClient(tracking_uri=url).get_metric_history(run.info.run_id, "val/loss")]
        assert len(steps) == 600 == len(set(steps))  # every epoch's value, each once

        # 2. Away for longer than logger.server_patience_s: one line, in about that time, not a hang.
        second = train("trainer.max_epochs=100000", "logger.server_patience_s=8")
        deadline = time.time() + 120
        while not logging(2):
            assert time.time() < deadline and second.poll() is None, second.communicate()[1][-3000:]
            time.sleep(0.3)
        stop(server)
        stopped = time.monotonic()
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1 and time.monotonic() - stopped < 45, err[-3000:]
        assert err.strip().splitlines()[-1].startswith(
            f"labbook: error: tracking server {url} did not answer for 8 s (logger.server_patience_s); the run "
            "stopped here."), err[-3000:]
        assert "Traceback" not in err
    finally:
        for proc in (first, second, server):
            if proc is not None:
                kill_group(proc.pid)
