"""What a run shows while it trains: one plain line per epoch when stdout is no terminal (a pipe, a CI log, a
SLURM job), a progress bar redrawn on time on a terminal, nothing under debug=quiet."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from labbook.train.progress import TimedProgressBar, epoch_line
from tests.conftest import LABBOOK, labbook
from tests.test_train_e2e import QUIET, only_run

LSTM = ("experiment=lstm_sine", "trainer.max_epochs=3", "datamodule.length=200")


def test_a_piped_run_prints_one_line_per_epoch_with_the_stored_values(tmp_path: Path, store: str) -> None:
    out = labbook("train", *LSTM, cwd=tmp_path)  # stdout is a pipe here
    assert out.returncode == 0, out.stderr[-3000:]
    assert "\r" not in out.stdout + out.stderr  # no carriage-return bar in a log
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    client, run_id = MlflowClient(store), only_run(store).info.run_id
    for key in ("val/loss", "train/loss"):  # each line holds that epoch's values, as stored
        stored = [m.value for m in client.get_metric_history(run_id, key)]
        shown = [float(line.split(f"{key}=")[1].split()[0]) for line in lines]
        assert shown == pytest.approx(stored, rel=1e-5), (key, lines)
    assert lines[0].split()[2].startswith("val/loss=")  # the model's monitor comes first

    quiet = labbook("train", *LSTM, QUIET, cwd=tmp_path)
    assert quiet.returncode == 0 and not any(line.startswith("epoch ") for line in quiet.stdout.splitlines())


def test_a_terminal_gets_a_progress_bar(tmp_path: Path, store: str) -> None:
    leader, follower = pty.openpty()
    # A terminal 120 columns wide (a new pty has 0, into which tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([LABBOOK, "train", *LSTM], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=subprocess.PIPE, start_new_session=True)
    os.close(follower)
    shown = b""
    deadline = time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process has exited
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    text = shown.decode(errors="replace")
    assert "Epoch 2" in text and "\r" in text and "it/s" in text  # tqdm's bar, redrawn in place
    assert not any(line.startswith("epoch ") for line in text.splitlines())


def test_the_bar_redraws_on_time_not_on_every_step() -> None:
    bar = TimedProgressBar(refresh_s=60.0)
    decisions = [bar._should_update(n, 10_000) for n in range(1, 1001)]
    assert decisions[0] and not any(decisions[1:])  # the first step draws, the next 999 within 60 s do not
    bar.refresh_s = 0.0
    assert bar._should_update(5, 100)  # once the interval has passed


def test_the_epoch_line_puts_the_monitor_and_its_training_counterpart_first() -> None:
    metrics = {"train/n_iter": 3.0, "val/aic": 1.5, "train/log_likelihood": -2.0, "val/log_likelihood": -2.5,
               "train/loss_step": 9.0}
    line = epoch_line(3, 10, metrics, 0.25, monitor="val/log_likelihood")
    assert line == "epoch 3/10  val/log_likelihood=-2.5  train/log_likelihood=-2  val/aic=1.5  train/n_iter=3  (0.2 s)"
