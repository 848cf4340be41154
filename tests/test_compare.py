"""`labbook compare` and `labbook diff` through the real command, against real stores: a SQLite store
written with MlflowClient (a sweep shaped as the sweep contract says, and a plain experiment), runs made
by `labbook train -m`, and a real `mlflow server`. Every expectation is read back from the store."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tests.conftest import LABBOOK, kill_group, labbook, run_process

T0 = 1_700_000_000_000  # start times are set explicitly: runs made within one millisecond must still order
SWEEP = [  # (model.lr, model.layers, val/loss, val/acc, test/rmse) of the sweep's four jobs
    ("0.1", "2", 0.5, 0.70, 1.5),
    ("0.01", "2", 0.3, 0.80, 1.25),
    ("0.001", "4", 0.4, 0.75, 1.4),
    ("0.01", "4", 0.2, 0.85, 1.125),
]
PLAIN_LOSS = [0.9, 0.4, 0.7, 0.2, 0.6, 0.8, 0.3, 0.55, 0.45, 0.65, 0.35, 0.75, 0.25, 0.5, 0.85]


@dataclass
class Made:
    uri: str
    root: Path
    parent: str
    children: list[str]  # in job order
    plain: list[str]  # in start order


def make_run(client: MlflowClient, experiment_id: str, start: int, params: dict, metrics: dict, tags: dict,
             config: dict | None = None) -> str:
    run = client.create_run(experiment_id, start_time=start, tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in params.items()], synchronous=True)
    if config is not None:
        client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config/config.yaml")
    client.set_terminated(run_id, "FINISHED", end_time=start + 65_000)
    return run_id


def experiment(client: MlflowClient, root: Path, name: str) -> str:
    return client.create_experiment(name, artifact_location=(root / "artifacts" / name).as_uri())


def make_sweep(client: MlflowClient, root: Path, start: int) -> tuple[str, list[str]]:
    exp = experiment(client, root, "sweepexp")
    parent = make_run(client, exp, start, {}, {}, {
        "sweep.role": "parent", "sweep.swept": "model.lr,model.layers", "sweep.objective": "val/loss",
        "sweep.direction": "minimize", "mlflow.runName": "the-sweep"})
    children = []
    for job, (lr, layers, loss, acc, rmse) in enumerate(SWEEP):
        config = {"model": {"lr": float(lr), "layers": int(layers)}, "trainer": {"max_epochs": 5},
                  "paths": {"output_dir": f"/out/{job}"}, "ckpt_path": None}
        params = {"model.lr": lr, "model.layers": layers, "trainer.max_epochs": "5", "paths.output_dir": f"/out/{job}"}
        tags = {"mlflow.parentRunId": parent, "sweep.role": "child", "sweep.job": str(job),
                "headline_metric": "test/rmse", "mlflow.runName": f"job-{job}",
                "git.commit": "abc123" if job < 3 else "def456", "git.dirty": "false"}
        metrics = {"val/loss": loss, "val/acc": acc, "test/rmse": rmse, "train/loss": loss / 2}
        children.append(make_run(client, exp, start + 1000 * (job + 1), params, metrics, tags, config))
    return parent, children


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """One store for the read-only tests: 15 plain runs, then a sweep (a parent, 4 children), and an
    experiment without runs: 20 runs in all."""
    root = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    plain_exp = experiment(client, root, "plain")
    plain = [make_run(client, plain_exp, T0 + 1000 * i, {"seed": str(i), "trainer.max_epochs": "3"},
                      {"val/loss": loss, "test/acc": 1 - loss}, {"headline_metric": "test/acc", "mlflow.runName": f"plain-{i}"})
             for i, loss in enumerate(PLAIN_LOSS)]
    experiment(client, root, "empty")
    parent, children = make_sweep(client, root, T0 + 100_000)
    return Made(uri, root, parent, children, plain)


def compare(made: Made, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return labbook("compare", *args, "--tracking-uri", made.uri, cwd=made.root, timeout=120, env=env)


def test_a_parent_run_id_compares_its_children_best_first(made: Made) -> None:
    out = compare(made, made.parent[:8])  # a prefix, as the table shows ids
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"sweep {made.parent[:8]} (sweepexp): 4 runs"
    columns = re.split(r"\s{2,}", lines[1].strip())
    # swept params first, in the sweep's order; equal (max_epochs) and run-local (paths.*) params not shown;
    # the objective, then the headline metric, then val/ metrics
    assert columns == ["run", "name", "status", "duration", "model.lr", "model.layers", "val/loss", "test/rmse", "val/acc"]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines[3:7]]
    by_loss = sorted(range(4), key=lambda j: SWEEP[j][2])  # the sweep minimizes val/loss
    assert [r[0].lstrip("* ") for r in rows] == [made.children[j][:8] for j in by_loss]
    assert lines[3].startswith("* ") and not lines[4].startswith("*")
    best = SWEEP[by_loss[0]]
    assert rows[0][1:] == [f"job-{by_loss[0]}", "FINISHED", "1m05s", best[0], best[1], "0.2", "1.125", "0.85"]
    assert "* best: lowest val/loss (the sweep's objective, minimized)" in out.stdout and "1 param is equal in every run (not shown)" in out.stdout
    assert "paths.output_dir" not in out.stdout and "parent" not in out.stdout.lower()


def test_no_argument_shows_the_sweep_of_the_newest_run(made: Made) -> None:
    out = labbook("compare", cwd=made.root, env={"MLFLOW_TRACKING_URI": made.uri}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"sweep {made.parent[:8]} (sweepexp): 4 runs"


def test_an_experiment_sorted_either_way_with_chosen_metrics(made: Made) -> None:
    out = compare(made, "plain", "--sort", "-val/loss", "--metric", "test/acc,val/loss", "--metric", "val/loss")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "experiment plain: 15 runs"
    assert re.split(r"\s{2,}", lines[1].strip()) == ["run", "name", "status", "duration", "seed", "test/acc", "val/loss"]
    shown = [re.split(r"\s{2,}", line.strip()) for line in lines[3:18]]
    descending = sorted(range(15), key=lambda i: -PLAIN_LOSS[i])
    assert [r[0].lstrip("* ") for r in shown] == [made.plain[i][:8] for i in descending]
    assert [r[-1] for r in shown] == [f"{PLAIN_LOSS[i]:.6g}" for i in descending]
    assert "* highest val/loss" in out.stdout

    ascending = compare(made, "plain", "--sort", "val/loss:asc", "--format", "json")
    assert ascending.returncode == 0, ascending.stderr
    assert [r["run_id"] for r in json.loads(ascending.stdout)] == [made.plain[i] for i in descending[::-1]]

    by_param = compare(made, "plain", "--sort", "seed:desc", "--format", "json")  # as numbers: 14, 13, ..., 10, 9, ... (not "9" first)
    assert [r["params"]["seed"] for r in json.loads(by_param.stdout)] == [str(i) for i in range(14, -1, -1)]


def test_csv_and_json_are_machine_readable_and_hold_full_ids_and_values(made: Made) -> None:
    as_json = compare(made, made.parent, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)  # stdout is nothing but the JSON
    assert as_json.stderr.strip() == f"sweep {made.parent[:8]} (sweepexp): 4 runs"
    client = MlflowClient(made.uri)
    for record in records:
        stored = client.get_run(record["run_id"])
        assert stored.data.tags["mlflow.parentRunId"] == made.parent
        assert record["params"] == {k: stored.data.params[k] for k in ("model.lr", "model.layers")}
        assert record["metrics"] == {k: stored.data.metrics[k] for k in ("val/loss", "test/rmse", "val/acc")}
        assert record["experiment"] == "sweepexp" and record["duration_s"] == 65.0

    as_csv = compare(made, "plain", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["run_id"] for r in rows] == made.plain  # no --sort: start order
    assert [float(r["metrics.val/loss"]) for r in rows] == PLAIN_LOSS
    assert set(rows[0]) == {"run_id", "name", "experiment", "status", "start_time", "duration_s", "params.seed",
                            "metrics.test/acc", "metrics.val/loss"}


def test_filter_is_mlflows_search_filter(made: Made) -> None:
    out = compare(made, made.parent, "--filter", "params.`model.lr` = '0.01'", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert sorted(r["run_id"] for r in json.loads(out.stdout)) == sorted(made.children[j] for j in (1, 3))
    assert "matching params.`model.lr` = '0.01'" in out.stderr


@pytest.mark.parametrize("args,expected", [
    (("nosuch",), "labbook: error: no experiment or run 'nosuch' in the store sqlite:///"),
    (("plain", "--metric", "nosuch"), "labbook: error: no listed run has the metric 'nosuch' (they have: test/acc, val/loss)"),
    (("plain", "--sort", "nosuch"), "labbook: error: --sort 'nosuch': no listed run has a metric or param 'nosuch'"),
    (("plain", "--filter", "metrics.`val/loss` <<< 1"), "labbook: error: --filter 'metrics.`val/loss` <<< 1': "),
    (("--format", "yaml"), "labbook compare: error: argument --format: invalid choice: 'yaml'"),
])
def test_mistakes_end_in_one_clear_line(made: Made, args: tuple[str, ...], expected: str) -> None:
    out = compare(made, *args)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.splitlines()[-1].startswith(expected), out.stderr
    assert "Traceback" not in out.stderr


def test_full_error_shows_the_traceback(made: Made) -> None:
    out = compare(made, "nosuch", env={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "UserError" in out.stderr


def test_an_empty_experiment_is_an_empty_table(made: Made) -> None:
    out = compare(made, "empty")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "experiment empty: 0 runs\n(no runs to show)\n"
    as_json = compare(made, "empty", "--format", "json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    for command in (("compare",), ("diff", "a" * 32, "b" * 32)):
        out = labbook(*command, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": ""}, timeout=120)
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip() == (f"labbook: error: no tracking store at {tmp_path.resolve() / 'mlflow.db'} (pass "
                                      "--tracking-uri URI, set MLFLOW_TRACKING_URI, or run from the directory holding mlflow.db)")
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_the_fast_path_imports_neither_mlflow_nor_torch(made: Made) -> None:
    """Startup stays well under a second: nothing heavy is imported for SQLite reads."""
    heavy = ("mlflow", "torch", "pytorch_lightning", "lightning", "hydra", "omegaconf", "sqlalchemy")
    code = ("import sys; from labbook.cli.commands import main\n"
            f"codes = [main(['compare', '--tracking-uri', {made.uri!r}, 'plain']),\n"
            f"         main(['diff', '--tracking-uri', {made.uri!r}, {made.children[0]!r}, {made.children[1]!r}])]\n"
            f"print(codes, sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
    started = time.monotonic()
    out = run_process([sys.executable, "-c", code], timeout=120, cwd=made.root)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[0, 0] []"
    assert elapsed < 10, elapsed  # a loose bound: the suite shares 2 cores; the docs give the measured time


def test_diff_shows_config_metrics_and_code(made: Made) -> None:
    a, b = made.children[0], made.children[3]
    out = labbook("diff", a[:8], b, "--tracking-uri", made.uri, cwd=made.root, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.splitlines()[0] == f"A: {a}  job-0  (experiment sweepexp, FINISHED)"
    config = text.split("config (config/config.yaml): 2 keys differ\n", 1)[1].split("\n\n", 1)[0]
    assert config.splitlines() == ["  model.layers: 2 -> 4", "  model.lr: 0.1 -> 0.01"]
    assert "run-local keys" in text and "  paths.output_dir: /out/0 -> /out/3" in text
    metrics = {line.split()[0]: line.split()[1:] for line in text.split("metrics (latest values):\n", 1)[1]
               .split("\n\n", 1)[0].splitlines()[1:]}
    assert metrics["val/loss"] == ["0.5", "0.2", "-0.3"] and metrics["test/rmse"] == ["1.5", "1.125", "-0.375"]
    assert text.rstrip().splitlines()[-3:] == ["  A: abc123 (clean)", "  B: def456 (clean)", "  different commits"]


def test_diff_across_experiments_falls_back_to_params_without_a_config(made: Made) -> None:
    out = labbook("diff", made.plain[0], made.children[1], "--tracking-uri", made.uri, cwd=made.root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(experiment plain, FINISHED)" in out.stdout and "(experiment sweepexp, FINISHED)" in out.stdout
    assert "config (A: params, B: config/config.yaml (a run without config/config.yaml: compared as text))" in out.stdout
    assert "- seed: 0  (only in A)" in out.stdout and "+ model.lr: 0.01  (only in B)" in out.stdout
    assert "trainer.max_epochs: 3 -> 5" in out.stdout


def test_diff_of_a_run_that_does_not_exist(made: Made) -> None:
    out = labbook("diff", made.plain[0], "f" * 32, "--tracking-uri", made.uri, cwd=made.root, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip() == f"labbook: error: run '{'f' * 32}' not found in the store {made.uri}"


HISTORIES = {  # run -> metric -> values by step (val/score: the runs' objective, minimized, whatever its name says)
    "h0": {"val/loss": [0.9, 0.3, 0.6], "val/score": [5.0, 1.0, 3.0], "val/acc": [0.1, 0.9, 0.5]},
    "h1": {"val/loss": [0.5, 0.4, 0.45], "val/score": [2.0, 7.0, 4.0], "val/acc": [0.6, 0.7, 0.65]},
    "h2": {"val/loss": [0.8, math.nan, 0.2], "val/score": [3.0, 3.0, 9.0], "val/acc": [0.2]},
}
BEST = {"val/loss": "min", "val/score": "min", "val/acc": "max"}  # by name; val/score as its runs' tags state


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("histories")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = experiment(client, root, "hist")
    ids = {}
    for i, (name, metrics) in enumerate(HISTORIES.items()):
        start = T0 + 1000 * i
        run = client.create_run(exp, start_time=start, tags={"mlflow.runName": name, "objective": "val/score",
                                                             "objective.direction": "minimize"})
        ids[name] = run.info.run_id
        client.log_batch(ids[name], metrics=[Metric(k, v, start + step, step) for k, values in metrics.items()
                                             for step, v in enumerate(values)], synchronous=True)
        client.set_terminated(ids[name], "FINISHED", end_time=start + 500)
    return uri, root, ids


def expected(uri: str, run_id: str, metric: str, agg: str) -> float:
    """``agg`` of the stored history, read with MlflowClient (not labbook's reader), NaN left out."""
    values = [m.value for m in sorted(MlflowClient(tracking_uri=uri).get_metric_history(run_id, metric),
                                      key=lambda m: m.step)]
    how = BEST[metric] if agg == "best" else agg
    return values[-1] if how == "last" else {"min": min, "max": max}[how](v for v in values if not math.isnan(v))


@pytest.mark.parametrize("agg", ["min", "max", "last", "best"])
def test_agg_shows_each_metrics_min_max_last_or_best(histories: tuple[str, Path, dict[str, str]], agg: str) -> None:
    uri, root, ids = histories
    heading = {m: f"{m} ({agg}: {BEST[m]})" if agg == "best" else f"{m} ({agg})" for m in BEST}
    base = ("compare", "hist", "--agg", agg, "--tracking-uri", uri)
    as_json = labbook(*base, "--format", "json", cwd=root, timeout=120)
    assert as_json.returncode == 0, as_json.stderr
    for row in json.loads(as_json.stdout):
        assert row["metrics"] == {heading[m]: expected(uri, row["run_id"], m, agg) for m in BEST}
    as_csv = labbook(*base, "--format", "csv", cwd=root, timeout=120)
    assert as_csv.returncode == 0, as_csv.stderr
    for row in csv.DictReader(io.StringIO(as_csv.stdout)):
        assert {k: float(v) for k, v in row.items() if k.startswith("metrics.")} == {
            f"metrics.{heading[m]}": expected(uri, row["run_id"], m, agg) for m in BEST}
    table = labbook(*base, cwd=root, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    head = re.split(r"\s{2,}", lines[1].strip())
    assert head[:4] == ["run", "name", "status", "duration"] and sorted(head[4:]) == sorted(heading.values())
    for line in lines[3:6]:
        cells = dict(zip(head, re.split(r"\s{2,}", line.strip())))
        run_id = ids[cells["name"]]
        assert cells["run"] == run_id[:8]
        assert {k: cells[heading[k]] for k in BEST} == {k: f"{expected(uri, run_id, k, agg):.6g}" for k in BEST}


def test_agg_orders_by_the_values_shown(histories: tuple[str, Path, dict[str, str]], made: Made) -> None:
    uri, root, ids = histories
    out = labbook("compare", "hist", "--agg", "max", "--sort", "val/loss", "--tracking-uri", uri, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    # max val/loss: h0 0.9, h1 0.5, h2 0.8 -> h1, h2, h0 (by the last values it would be h2, h1, h0)
    assert [line.lstrip("* ").split()[0] for line in out.stdout.splitlines()[3:6]] == [ids[n][:8] for n in ("h1", "h2", "h0")]
    assert "* lowest val/loss (max) (--sort M is ascending; -M or M:desc for descending)\n" in out.stdout
    # a sweep ordered by another value than its rule's says so, and points to the rule
    swept = compare(made, made.parent, "--agg", "min")
    assert swept.returncode == 0, swept.stderr
    assert ("* lowest val/loss (min) of the runs that finished (the sweep's objective, minimized; the sweep's best, "
            "by its rule: compare without --agg)") in swept.stdout
    bad = compare(made, "--agg", "median")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines()[-1] == ("labbook compare: error: argument --agg: invalid choice: 'median' (choose "
                                           "from 'last', 'best', 'min', 'max')")


def test_runs_made_by_labbook_train(tmp_path: Path, store: str) -> None:
    """A real `train -m`: with no argument compare shows the newest sweep, its two children."""
    out = labbook("train", "-m", "experiment=gmm_blobs", "model.covariance_type=full,diag", "trainer.max_epochs=2",
                  "debug=quiet", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(store)
    trained = [r for r in client.search_runs([client.get_experiment_by_name("gmm_blobs").experiment_id])
               if r.data.tags.get("sweep.role") != "parent"]
    by_type = {r.data.params["model.covariance_type"]: r for r in trained}
    assert sorted(by_type) == ["diag", "full"]

    shown = labbook("compare", "--format", "json", cwd=tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert re.fullmatch(r"sweep [0-9a-f]{8} \(gmm_blobs\): 2 runs", shown.stderr.strip())
    for record in json.loads(shown.stdout):
        run = next(r for r in trained if r.info.run_id == record["run_id"])
        assert record["params"] == {"model.covariance_type": run.data.params["model.covariance_type"]}
        assert record["metrics"]["test/log_likelihood"] == run.data.metrics["test/log_likelihood"]
        # the sweep's objective by the sweep's rule: its best checkpoint's score, headed so; the others' last values
        objective = "val/log_likelihood"
        assert record["metrics"][f"{objective} (best ckpt)"] == float(run.data.tags["checkpoint.best_score"])
        assert run.data.tags["checkpoint.monitor"] == objective
        assert {k for k in record["metrics"]} == {"test/log_likelihood", f"{objective} (best ckpt)"} | {
            k for k in run.data.metrics if k.startswith("val/") and k != objective}

    table = labbook("compare", cwd=tmp_path, timeout=120)
    assert table.returncode == 0, table.stderr
    print(table.stdout)  # shown by pytest -s; docs/compare.md pastes it
    full = by_type["full"]
    row = next(line for line in table.stdout.splitlines() if line.lstrip("* ").startswith(full.info.run_id[:8]))
    assert f"{full.data.metrics['test/log_likelihood']:.6g}" in row.split() and "full" in row.split()

    diff = labbook("diff", by_type["full"].info.run_id, by_type["diag"].info.run_id, cwd=tmp_path, timeout=120)
    assert diff.returncode == 0, diff.stderr
    changed = diff.stdout.split("config (config/config.yaml): 1 key differs\n", 1)[1].split("\n\n", 1)[0]
    assert changed == "  model.covariance_type: full -> diag"  # paths.* are listed apart, not as differences
    # trained in tmp_path, outside any git repository: the project's code state is unknown, and said so
    assert (full.data.tags["git.commit"], full.data.tags["git.dirty"]) == ("unknown", "unknown")
    assert "  A: unknown (dirty: unknown)\n" in diff.stdout
    assert "  code not comparable: A and B ran outside a git repository\n" in diff.stdout


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """A real `mlflow server` (own session, one worker) on a free port; killed with its workers at the end."""
    port = free_port()
    mlflow = str(Path(LABBOOK).parent / "mlflow")
    proc = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {proc.stderr.read()[-2000:] if proc.poll() is not None else 'timeout'}")
            time.sleep(0.5)
        yield url
    finally:
        kill_group(proc.pid)
        proc.wait(timeout=30)


def test_against_a_tracking_server(tmp_path: Path, server: str) -> None:
    client = MlflowClient(tracking_uri=server)
    parent, children = make_sweep(client, tmp_path, T0)
    uri = ("--tracking-uri", server)

    out = labbook("compare", *uri, "sweepexp", "--format", "json", cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "experiment sweepexp: 4 runs"
    assert [r["run_id"] for r in json.loads(out.stdout)] == children  # start order; the parent left out
    assert json.loads(out.stdout)[2]["metrics"] == {"val/loss": 0.4, "test/rmse": 1.4, "val/acc": 0.75}

    table = labbook("compare", *uri, cwd=tmp_path, timeout=120)  # no argument: the newest run's sweep
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == f"sweep {parent[:8]} (sweepexp): 4 runs"
    assert table.stdout.splitlines()[3].startswith(f"* {children[3][:8]}")

    filtered = labbook("compare", *uri, parent, "--filter", "metrics.`val/loss` < 0.45", "--format", "csv",
                       cwd=tmp_path, timeout=120)
    assert filtered.returncode == 0, filtered.stderr
    assert [r["run_id"] for r in csv.DictReader(io.StringIO(filtered.stdout))] == [children[3], children[1], children[2]]

    bad = labbook("compare", *uri, "sweepexp", "--filter", "nonsense ===", cwd=tmp_path, timeout=120)
    assert bad.returncode == 1 and bad.stderr.startswith("labbook: error: --filter 'nonsense ===': ")

    diff = labbook("diff", *uri, children[0], children[2], cwd=tmp_path, timeout=120)  # config via the server
    assert diff.returncode == 0, diff.stderr
    assert "config (config/config.yaml): 2 keys differ\n  model.layers: 2 -> 4\n  model.lr: 0.1 -> 0.001\n" in diff.stdout
    assert "  same code (same commit, both clean)" in diff.stdout

    missing = labbook("diff", *uri, children[0], "0" * 32, cwd=tmp_path, timeout=120)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"labbook: error: run '{'0' * 32}' not found in the store {server}"

    # --agg reads a metric's history over REST: children[0]'s val/loss goes 0.5 (step 0), 0.05, 0.9
    client.log_batch(children[0], metrics=[Metric("val/loss", 0.05, T0 + 1, 1), Metric("val/loss", 0.9, T0 + 2, 2)],
                     synchronous=True)
    for agg, value in (("min", 0.05), ("max", 0.9), ("last", 0.9), ("best", 0.05)):
        shown = labbook("compare", *uri, "sweepexp", "--agg", agg, "--metric", "val/loss", "--format", "json",
                        cwd=tmp_path, timeout=120)
        assert shown.returncode == 0, shown.stderr
        heading = "val/loss (best: min)" if agg == "best" else f"val/loss ({agg})"
        assert json.loads(shown.stdout)[0]["metrics"] == {heading: value}
