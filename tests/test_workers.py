"""WorkerWatch on real processes: what rank 0 does when a worker dies (end to end: test_train_e2e)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from labbook.train.ranks import WorkerWatch
from tests.conftest import python_script


def worker(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_a_clean_exit_is_no_failure() -> None:
    watch = WorkerWatch()
    watch.start([worker("pass")])
    time.sleep(3 * watch.poll_s)
    assert watch.stop(timeout_s=30) is None and watch.failure is None


def test_death_by_signal_is_recorded_and_the_other_workers_are_stopped() -> None:
    victim, bystander = worker("import time; time.sleep(60)"), worker("import time; time.sleep(60)")
    watch = WorkerWatch()
    watch.start([bystander, victim])
    victim.send_signal(signal.SIGKILL)
    deadline = time.time() + 30
    while watch.failure is None and time.time() < deadline:
        time.sleep(0.05)
    assert watch.failure == f"DDP worker rank 2 (pid {victim.pid}) was killed by SIGKILL"
    assert watch.failure_code == -signal.SIGKILL
    assert bystander.wait(timeout=30) == -signal.SIGKILL  # nobody is left waiting on the dead one
    assert watch.stop(timeout_s=30) == watch.failure


def test_an_exit_after_rank_zero_is_done_is_reported_by_stop() -> None:
    watch = WorkerWatch()
    proc = worker("import sys; sys.exit(3)")
    watch.procs = [proc]  # not started: the job ended before the watch could look
    assert watch.stop(timeout_s=30) == f"DDP worker rank 1 (pid {proc.pid}) exited with code 3"


def test_workers_that_rank_zero_stops_are_no_failure() -> None:
    proc = worker("import time; time.sleep(60)")
    watch = WorkerWatch()
    watch.start([proc])
    watch.expect_exit()
    watch.kill()
    assert watch.stop(timeout_s=30) is None


def test_a_worker_that_does_not_exit_is_killed_and_reported() -> None:
    proc = worker("import time; time.sleep(60)")
    watch = WorkerWatch()
    watch.procs = [proc]
    assert watch.stop(timeout_s=0.5) == f"DDP worker rank 1 (pid {proc.pid}) did not exit after the job ended"
    assert proc.returncode == -signal.SIGKILL


ABANDON = textwrap.dedent("""
    import subprocess, sys, time
    from pathlib import Path
    from labbook.train.ranks import WorkerWatch

    record = Path(sys.argv[1])
    watch = WorkerWatch(on_abandon=record.write_text, grace_s=1.0)
    watch.start([subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(7)"])])
    time.sleep(60)  # rank 0 stuck in a collective that never returns
    record.write_text("not abandoned")
""")


def test_rank_zero_stuck_after_a_worker_died_records_the_failure_and_ends(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    script = tmp_path / "abandon.py"
    script.write_text(ABANDON)
    proc = python_script(script, str(record), cwd=tmp_path, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert record.read_text().startswith("WorkerFailed: DDP worker rank 1 (pid ")
    assert record.read_text().endswith("exited with code 7")
    assert "stopping the job" in proc.stderr
