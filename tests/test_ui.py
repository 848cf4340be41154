"""`labbook ui` in a real browser: Debian's chromium driven by Playwright (no browser downloaded) on a store
holding a finished run and a sweep, and on one holding a run whose model is registered. The screenshots stay in
test-outputs/ui/ for a person to look at."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from mlflow.tracking import MlflowClient

from labbook.cli.ui import MODEL_TRAINING
from labbook.store.postgres import free_port
from tests.conftest import LABBOOK, REPO, labbook, logged_models, runs, stop
from tests.test_train_e2e import QUIET

SHOTS = REPO / "test-outputs" / "ui"
# What a person does once in MLflow 3.17's UI and the browser then remembers: close the assistant panel,
# which opens by itself on a first visit from localhost, and the telemetry notice. The "Model training" view
# is not set here: the URL `labbook ui` prints selects it (workflowType=machine_learning).
FIRST_VISIT_DONE = """try {
  localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
  localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
  localStorage.setItem('mlflow.telemetry.info.alert.dismissed_v1', 'true');
} catch (e) {}"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("Debian's chromium is not installed: apt-get install chromium (.ci/run does it)")
    return found


@contextlib.contextmanager
def labbook_ui(cwd: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """`labbook ui` started in ``cwd`` (its store: $MLFLOW_TRACKING_URI), once it answers: (its URL, its process);
    stopped on leaving."""
    proc = subprocess.Popen([LABBOOK, "ui", "--port", str(free_port())], cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("labbook ui: http://127.0.0.1:"), (
            line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.split(": ", 1)[1].strip(), proc
    finally:
        stop(proc, timeout=30)


@contextlib.contextmanager
def browser_page() -> Iterator[Any]:
    """A page of Debian's chromium, as a person who has been to MLflow's UI before sees it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.add_init_script(FIRST_VISIT_DONE)
            yield context.new_page()
        finally:
            browser.close()


@pytest.fixture
def ui(tmp_path: Path, store: str):  # noqa: ANN201
    """A store with a finished run and a two-job sweep, and `labbook ui` serving it: (url, store, process)."""
    single = labbook("train", "experiment=polynomial", "trainer.max_epochs=5", "logger.run_name=cubic-fit", QUIET,
                     cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    sweep = labbook("train", "-m", "experiment=polynomial", "trainer.max_epochs=3", "model.optimizer.lr=0.001,0.01",
                    QUIET, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    with labbook_ui(tmp_path) as (url, proc):
        yield url, store, proc


def test_the_ui_shows_a_run_and_a_sweep_in_a_real_browser(ui: tuple) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, store, server = ui
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                filter_string="attributes.run_name = 'cubic-fit'")
    experiment = run.info.experiment_id
    assert url.endswith(f"/#/experiments/{experiment}/runs?workflowType=machine_learning")  # the newest experiment
    (parent,) = [r for r in runs(store, parents=True) if r.data.tags.get("sweep.role") == "parent"]
    children = [r for r in runs(store) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    SHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.add_init_script(FIRST_VISIT_DONE)
            page = context.new_page()
            page.goto(url)
            names = page.locator('[role="gridcell"][col-id="attributes.`Run Name`"] a[href*="/runs/"]')
            names.first.wait_for(timeout=60000)
            # The "Model training" view: its runs table and sidebar, not the GenAI one ("Training runs").
            expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
            expect(page.get_by_role("link", name="Model registry")).to_be_visible()
            expect(page.get_by_role("link", name="cubic-fit", exact=True)).to_be_visible()
            # The Dataset column names each run's data (MLflow's dataset tracking).
            expect(page.get_by_text("sine_curve").first).to_be_visible()
            sweep_name = parent.data.tags["mlflow.runName"]
            # The sweep's parent lists its children (collapsed under it until expanded).
            page.locator('[role="gridcell"][col-id="attributes.`Run Name`"]',
                         has=page.get_by_role("link", name=sweep_name, exact=True)
                         ).locator('button[data-component-id$="runnamecellrenderer.tsx_46"]').click()
            for child in children:
                expect(page.get_by_role("link", name=child.data.tags["mlflow.runName"], exact=True)).to_be_visible()
            page.screenshot(path=str(SHOTS / "runs-table-with-sweep.png"))

            # One run's page: its name, a metric with the stored value, and a plot among its artifacts.
            page.goto(f"{url.split('#')[0]}#/experiments/{experiment}/runs/{run.info.run_id}")
            row = page.locator('[role="row"]', has=page.get_by_role("link", name="val/loss", exact=True))
            row.wait_for(timeout=60000)
            expect(page.get_by_text("cubic-fit").first).to_be_visible()
            assert f"{run.data.metrics['val/loss']:.6}"[:6] in row.inner_text()
            page.screenshot(path=str(SHOTS / "run-overview.png"))
            page.get_by_role("tab", name="Artifacts").click()
            page.locator('[data-testid="artifact-tree-node"][artifact-name="plots"]').click()
            page.locator('[data-testid="artifact-tree-node"][artifact-name="fit.png"]').click()
            page.locator('img[alt="plots/fit.png"]').wait_for(timeout=60000)
            page.screenshot(path=str(SHOTS / "run-artifact-plot.png"))
        finally:
            browser.close()

    server.send_signal(signal.SIGINT)  # Ctrl-C: the server goes with it
    assert server.wait(timeout=30) == 0 and "labbook ui: stopped" in server.stderr.read()


def test_the_ui_shows_a_runs_model_and_its_registered_alias(tmp_path: Path, store: str) -> None:
    from playwright.sync_api import expect

    out = labbook("train", "experiment=polynomial", "trainer.max_epochs=3", "logger.run_name=cubic-model", QUIET,
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = runs(store)
    run_id, experiment = run.info.run_id, run.info.experiment_id
    (model,) = logged_models(store, run_id)
    client = MlflowClient(tracking_uri=store)
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert output.model_id == model.model_id
    (linked,) = [m for m in model.metrics if m.key == "val/loss"]
    registered = labbook("register", run_id, "--name", "cubic", "--alias", "champion", cwd=tmp_path)
    assert registered.returncode == 0, registered.stderr[-2000:]
    SHOTS.mkdir(parents=True, exist_ok=True)

    with labbook_ui(tmp_path) as (url, server), browser_page() as page:
        base = url.split("#")[0]
        # The run's page lists its logged model: its name linking to the model's page, the step it was logged at
        # (the checkpoint's epoch), its status, its registered version, and the validation metric linked to it.
        page.goto(f"{base}#/experiments/{experiment}/runs/{run_id}?{MODEL_TRAINING}")
        heading = page.get_by_role("heading", name="Logged models (1)", exact=True)
        heading.wait_for(timeout=60000)
        row = page.locator('[role="row"]', has=page.locator('[role="gridcell"][col-id="relationship_type"]'))
        row.first.wait_for(timeout=60000)
        expect(row).to_have_count(1)

        def cell(column: str) -> Any:
            return row.locator(f'[role="gridcell"][col-id="{column}"]')

        expect(cell("relationship_type")).to_have_text("Output")
        expect(cell("step")).to_have_text(str(output.step))
        expect(cell("status")).to_have_text("Ready")
        expect(cell("registered_models")).to_have_text(re.compile(r"^cubic\s*v1$"))
        link = cell("name").get_by_role("link", name=model.name, exact=True)
        expect(link).to_have_attribute("href", f"#/experiments/{experiment}/models/{model.model_id}")
        metric = row.locator('[role="gridcell"][col-id^="metrics."][col-id*="val/loss"]')
        assert float(metric.inner_text()) == pytest.approx(linked.value, rel=1e-12)
        # The run's metrics table names the model its val/loss is linked to.
        metrics_row = page.locator('[role="row"]', has=page.get_by_role("link", name="val/loss", exact=True))
        expect(metrics_row.get_by_role("link", name=model.name, exact=True)).to_be_visible()
        heading.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "run-logged-model.png"))

        # The logged model's own page: its id, the run it came from, its registered version.
        link.click()
        page.get_by_text(model.model_id, exact=True).wait_for(timeout=60000)
        expect(page.get_by_text(run_id, exact=True)).to_be_visible()
        registered_version = page.get_by_role("link", name="cubic", exact=True)
        expect(registered_version).to_have_attribute("href", "#/models/cubic/versions/1")
        expect(registered_version).to_contain_text("v1")
        page.screenshot(path=str(SHOTS / "logged-model.png"))

        # The registered model's page: version 1, with its alias.
        page.goto(f"{base}#/models/cubic?{MODEL_TRAINING}")
        version = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 1", exact=True))
        version.wait_for(timeout=60000)
        expect(version.get_by_text(re.compile(r"^@\s*champion$"))).to_be_visible()
        expect(page.get_by_role("row")).to_have_count(2)  # the header and version 1: no other version
        page.screenshot(path=str(SHOTS / "registered-model-alias.png"))

    assert server.returncode == 0 and "labbook ui: stopped (SIGINT)" in server.stderr.read()


def test_ui_refuses_a_taken_port_and_warns_off_loopback(tmp_path: Path, store: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = labbook("ui", "--port", str(port), cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"labbook: error: --port {port}: 127.0.0.1:{port} is not free (Address already in use; another UI or "
        "server is there?); choose another with --port"]
    assert (tmp_path / "mlflow.db").exists()  # the store was created (or upgraded) before anything else
    with socket.socket() as taken:  # off loopback: a warning first, whatever happens next
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        out = labbook("ui", "--host", "0.0.0.0", "--port", str(port), cwd=tmp_path)
    warning, error = out.stderr.strip().splitlines()
    assert warning == (f"labbook: warning: --host 0.0.0.0: the UI and everything in the store {store} (configs, "
                       f"metrics, artifacts) are open to anyone who can reach this machine on port {port}")
    assert out.returncode == 1 and error.startswith(f"labbook: error: --port {port}: 0.0.0.0:{port} is not free")


def test_a_run_records_its_dataset_and_system_metrics(tmp_path: Path, store: str) -> None:
    import hashlib
    import json

    import numpy as np

    rows = np.random.default_rng(0).normal(size=(300, 3))
    csv = tmp_path / "measurements.csv"
    csv.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.5f}" for v in row) for row in rows) + "\n")
    out = labbook("train", "datamodule=tabular", f"datamodule.path={csv}", "model.n_components=2",
                  "trainer.max_epochs=400", "model.tol=0", "logger.system_metrics_every_s=1", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    off = labbook("train", "experiment=polynomial", "trainer.max_epochs=200", "logger.system_metrics=false",
                  "logger.system_metrics_every_s=1", QUIET, cwd=tmp_path)
    assert off.returncode == 0, off.stderr[-2000:]
    (csv_run,) = [r for r in runs(store) if r.data.params.get("datamodule.path") == str(csv)]
    (given,) = csv_run.inputs.dataset_inputs
    dataset = given.dataset
    assert dataset.name == "measurements.csv" and dataset.source_type == "local"
    assert json.loads(dataset.source) == {"uri": str(csv)}
    assert dataset.digest == hashlib.sha256(csv.read_bytes()).hexdigest()[:8]
    profile = json.loads(dataset.profile)
    assert profile["dims"]["n_features"] == 3 and sum(profile["examples"].values()) < 300
    assert {t.key: t.value for t in given.tags} == {"mlflow.data.context": "training"}
    # System metrics, sampled while the run was open; none when switched off.
    assert "system/cpu_utilization_percentage" in csv_run.data.metrics
    assert "system/system_memory_usage_megabytes" in csv_run.data.metrics
    (poly,) = [r for r in runs(store) if r.info.run_id != csv_run.info.run_id]
    assert not [k for k in poly.data.metrics if k.startswith("system/")]
    assert poly.inputs.dataset_inputs[0].dataset.name == "sine_curve"
