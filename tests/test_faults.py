"""Faults a demanding user and an operator meet, each through the real `labbook` command and read back from the
store: two resumes of one run at once, a SIGKILL right after a checkpoint reached the store, a FINISHED run
resumed with nothing to train, secrets of every shape, and stores that cannot be used."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import LABBOOK, kill_group, labbook, python_script, runs
from tests.test_train_e2e import QUIET

HERE = Path(__file__).resolve().parent
TINY = ("experiment=polynomial", "trainer.max_epochs=2", QUIET)


def one_run(uri: str):  # noqa: ANN201
    (run,) = runs(uri)
    return run


def history(db: Path, key: str) -> list[tuple[int, float]]:
    """Every stored point of ``key``, read with sqlite3: (step, value) in step order, repeats included."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("SELECT step, value FROM metrics WHERE key = ? ORDER BY step, timestamp", (key,)).fetchall()


def _stored(db: Path, key: str) -> list[tuple[int, float]]:
    """:func:`history` while a run may be writing: read-only, and empty while the store is busy or not there."""
    if not db.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute("SELECT step, value FROM metrics WHERE key = ?", (key,)).fetchall()
    except sqlite3.Error:
        return []


# ------------------------------------------------------------------------------------ one run, one owner

def test_of_many_processes_claiming_a_stopped_run_at_once_exactly_one_wins(tmp_path: Path, store: str) -> None:
    """The claim itself (labbook.run.owners.claim), raced: 3 processes released by one barrier, 8 times; the
    winner ends its attempt, which frees the run for the next round."""
    from labbook.store.prepare import prepare_store

    prepare_store(store)
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("race"))
    client.set_terminated(run.info.run_id, status="FAILED")
    out = python_script(HERE / "claim_race.py", store, run.info.run_id, "8", "3", cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rounds = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rounds) == 8
    for number, round_ in enumerate(rounds):
        (winner,) = [r for r in round_ if r["won"]]
        assert winner["attempt"] == number + 1
        for loser in (r for r in round_ if not r["won"]):
            assert loser["attempt"].startswith("another resume claimed this run first: process ")


def test_two_resumes_started_together_one_proceeds_the_other_names_it(tmp_path: Path, store: str) -> None:
    """The command: twice, two `labbook train resume=RUN` started at once; one trains, the other ends with one
    line naming the owner, and no epoch's metrics are stored twice."""
    out = labbook("train", "experiment=gmm_blobs", "trainer.max_epochs=2", "model.tol=0", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = one_run(store).info.run_id
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for epochs in (40, 80):
        args = [LABBOOK, "train", f"resume={run_id}", f"trainer.max_epochs={epochs}", QUIET]
        procs = [subprocess.Popen(args, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True) for _ in range(2)]
        try:
            done = [p.communicate(timeout=300) for p in procs]
        finally:
            for p in procs:
                kill_group(p.pid)
        codes = sorted(p.returncode for p in procs)
        assert codes == [0, 1], [d[1][-2000:] for d in done]
        refused = done[[p.returncode for p in procs].index(1)][1].strip().splitlines()
        assert len(refused) == 1 and refused[0].startswith(f"labbook: error: resume={run_id}: "), refused
        assert "process " in refused[0] and " on " in refused[0], refused
    steps = [s for s, _ in history(tmp_path / "mlflow.db", "train/log_likelihood")]
    assert len(steps) == len(set(steps)) == 80  # every epoch once: none repeated by the loser, none lost


# ----------------------------------------------------------------------------- metrics: exactly once

def test_a_run_killed_right_after_a_checkpoint_reached_the_store_resumes_with_every_epoch_once(
        tmp_path: Path, store: str) -> None:
    """SIGKILL the moment last.ckpt changes in the store (the 4th time), `labbook reap`, `resume=`: every
    epoch's train/ and val/ metrics exactly once, `epoch` once per step, and the resumed run's system
    metrics continue after the first segment's steps."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([LABBOOK, "train", "experiment=polynomial", "trainer.max_epochs=300", QUIET,
                             "callbacks.checkpoint.last_every_s=0", "logger.flush_every_s=0.2",
                             "logger.system_metrics_every_s=0.5"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    copies, seen, deadline = 0, None, time.time() + 120
    db = tmp_path / "mlflow.db"
    try:
        while len(_stored(db, "system/cpu_utilization_percentage")) < 2:  # the first segment's system metrics
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        while copies < 4:
            assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-2000:]
            found = list((tmp_path / "mlartifacts").rglob("checkpoints/last.ckpt"))
            stamp = found[0].stat().st_mtime_ns if found else None
            if stamp is not None and stamp != seen:
                seen, copies = stamp, copies + 1
            time.sleep(0.001)
        kill_group(proc.pid)
    finally:
        kill_group(proc.pid)
        proc.communicate()
    before = [s for s, _ in history(db, "system/cpu_utilization_percentage")]
    assert labbook("reap", cwd=tmp_path).returncode == 0
    run_id = one_run(store).info.run_id
    out = labbook("train", f"resume={run_id}", QUIET, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert one_run(store).info.status == "FINISHED"
    for key in ("train/loss", "val/loss"):
        steps = [s for s, _ in history(db, key)]
        assert steps == list(range(300)), (key, [s for s, n in collections.Counter(steps).items() if n > 1],
                                          sorted(set(range(300)) - set(steps)))
    epochs = history(db, "epoch")
    assert len(epochs) == len({s for s, _ in epochs}), "epoch stored twice at a step"
    after = [s for s, _ in history(db, "system/cpu_utilization_percentage")][len(before):]
    assert before and after and min(after) > max(before), (before, after)


def test_resuming_a_finished_run_with_nothing_left_to_train_is_refused(tmp_path: Path, store: str) -> None:
    assert labbook("train", *TINY, cwd=tmp_path).returncode == 0
    run = one_run(store)
    tested = history(tmp_path / "mlflow.db", "test/loss")
    out = labbook("train", f"resume={run.info.run_id}", QUIET, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"labbook: error: resume={run.info.run_id}: the run FINISHED and has trained 2 epochs: nothing is left to "
        "train; give trainer.max_epochs=3 or more to train it further"]
    assert history(tmp_path / "mlflow.db", "test/loss") == tested  # not tested, nor logged, a second time
    further = labbook("train", f"resume={run.info.run_id}", "trainer.max_epochs=3", QUIET, cwd=tmp_path)
    assert further.returncode == 0, further.stderr[-2000:]
    assert [s for s, _ in history(tmp_path / "mlflow.db", "train/loss")] == [0, 1, 2]


# ---------------------------------------------------------------------------------------------- secrets

SECRET = ("tOk3n zq7Xk9 a passphrase with spaces, 'quotes' and \"double quotes\", non-ASCII 実験 letters, "
          "and long enough that YAML folds it over two lines of eighty columns")
TYPED = "pw Yv3mQ8 typed as it is, with 実験 and \"double quotes\" in it"  # Hydra: single-quoted on the line
FRAGMENTS = ["zq7Xk9", "Yv3mQ8", "実験", "\\u5B9F", "\\u5b9f", "passphrase"]


def _leaks(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="replace")
    return [f for f in FRAGMENTS if f in text]


def test_no_secret_of_any_shape_reaches_the_store_or_the_terminal(tmp_path: Path, store: str) -> None:
    """Secret environment values (long, with spaces, quotes and non-ASCII letters) in config values through
    ``${oc.env:…}`` and typed on the command line: grep the database dump, every artifact file and the output
    (an error's line too). ``config/overrides.yaml`` keeps the reference as written."""
    env = {"LABBOOK_TEST_TOKEN": SECRET, "LABBOOK_TEST_PASSWORD": TYPED}
    out = labbook("train", *TINY, "logger.run_name=${oc.env:LABBOOK_TEST_TOKEN}",
                  "+logger.tags.from_env=${oc.env:LABBOOK_TEST_TOKEN}", f"+logger.tags.typed='{TYPED}'",
                  cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    bad = labbook("train", *TINY, f"datamodule.n_points='{TYPED}'", cwd=tmp_path, env=env)  # an error's line
    assert bad.returncode == 1 and "***" in bad.stderr, bad.stderr
    with contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as con:
        dump = "\n".join(con.iterdump()).encode()
        assert con.execute("SELECT COUNT(*) FROM tags WHERE value = '***'").fetchone()[0] >= 2  # they were there
    assert not _leaks(dump), _leaks(dump)
    files = [p for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()]
    assert any(p.name == "overrides.yaml" for p in files)
    leaked = {str(p): _leaks(p.read_bytes()) for p in files if _leaks(p.read_bytes())}
    assert not leaked, leaked
    for output in (out.stdout, out.stderr, bad.stdout, bad.stderr):
        assert not _leaks(output.encode()), output[-2000:]
    overrides = next(p for p in files if p.name == "overrides.yaml").read_text()
    assert "logger.run_name=${oc.env:LABBOOK_TEST_TOKEN}" in overrides


# --------------------------------------------------------------------------------------- unusable stores

@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: str):  # noqa: ANN201
    """A small tmpfs at ``where`` (root only); skipped where this process cannot mount."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): the store's disk cannot be made "
                    "full or read-only")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as fh:
        while True:
            fh.write(b"\0" * 65536)


@pytest.fixture
def silent_server():  # noqa: ANN201
    """A port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(sock.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(out: subprocess.CompletedProcess, took: float, names: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("labbook: error: "), out.stderr[-3000:]
    assert names in lines[0], (names, lines[0])
    assert "Traceback" not in out.stderr and took < 10, (took, lines[0])


def _timed(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    out = labbook(*args, cwd=cwd, timeout=120)
    return out, time.monotonic() - started


def _no_run_running(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
        assert con.execute("SELECT COUNT(*) FROM runs WHERE status = 'RUNNING'").fetchone() == (0,)


def test_a_read_only_store_is_one_line(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "20m") as folder:
        assert labbook("train", *TINY, cwd=folder).returncode == 0
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        out, took = _timed("train", *TINY, f"logger.tracking_uri={uri}", cwd=tmp_path)
        _one_line(out, took, f"tracking store {folder / 'mlflow.db'} is read-only")
        assert labbook("compare", "--tracking-uri", uri, cwd=tmp_path).returncode == 0  # still readable
        _no_run_running(folder / "mlflow.db")


def test_a_directory_or_a_file_that_is_no_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    (tmp_path / "text.db").write_text("not a database\n")
    for name, says in (("folder.db", "is a directory, not a SQLite file"), ("text.db", "is not a")):
        uri = f"sqlite:///{tmp_path / name}"
        for command in (["train", *TINY, f"logger.tracking_uri={uri}"], ["compare", "--tracking-uri", uri],
                        ["reap", "--tracking-uri", uri], ["predict", "--tracking-uri", uri, "0" * 32, "1"]):
            out, took = _timed(*command, cwd=tmp_path)
            _one_line(out, took, says)


def test_a_full_disk_is_one_line_and_the_run_fails_where_the_store_can_still_say_so(tmp_path: Path) -> None:
    """The store's own disk full before the run: one line naming the store, no run. Only the artifacts' disk
    full: the run is opened, then marked FAILED with the reason."""
    from labbook.store.prepare import prepare_store

    with mounted_tmpfs(tmp_path / "full", "3m") as folder:
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        prepare_store(uri)
        _fill(folder)
        out, took = _timed("train", *TINY, f"logger.tracking_uri={uri}", cwd=tmp_path)
        _one_line(out, took, f"tracking store {folder / 'mlflow.db'}: its disk is full (0.0 MB free)")
        _no_run_running(folder / "mlflow.db")
    work = tmp_path / "work"
    with mounted_tmpfs(work / "mlartifacts", "1m") as artifacts:
        _fill(artifacts)
        out, _ = _timed("train", *TINY, cwd=work)
        ended = time.time()
        (run,) = runs(f"sqlite:///{work / 'mlflow.db'}")
        # Timed from the run's opening (its first artifact write meets the full disk): the command's start-up,
        # torch and Lightning imported, comes before any store is touched.
        _one_line(out, ended - run.info.start_time / 1000, "No space left on device")
        assert run.info.status == "FAILED" and "No space left on device" in run.data.tags["error"]
        assert f"(run {run.info.run_id} marked FAILED)" in out.stderr


@pytest.mark.parametrize("kind", ["postgresql down", "server down", "server that never answers"])
def test_an_unreachable_store_is_one_line_within_seconds_for_every_command(tmp_path: Path, kind: str,
                                                                            silent_server: str) -> None:
    """Every command, not only train: where MLflow's client retried for one to four minutes, or said a run
    was "not found" when the server was down. A password in the URI is never printed."""
    port = _closed_port()
    uri = {"postgresql down": f"postgresql://user:S3cr3tPW@127.0.0.1:{port}/mlflow",
           "server down": f"http://127.0.0.1:{port}", "server that never answers": silent_server}[kind]
    for command in (["train", *TINY, f"logger.tracking_uri={uri}"], ["compare", "--tracking-uri", uri],
                    ["reap", "--tracking-uri", uri], ["predict", "--tracking-uri", uri, "0" * 32, "1"],
                    ["train", f"resume={'0' * 32}", f"logger.tracking_uri={uri}"]):
        out, took = _timed(*command, cwd=tmp_path)
        _one_line(out, took, "cannot reach" if kind == "postgresql down" else "cannot be reached")
        assert "S3cr3tPW" not in out.stderr and "not found" not in out.stderr, out.stderr
