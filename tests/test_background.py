"""Store writes off the training thread (labbook.run.background): the periodic metrics flushes and the copies of
checkpoints into the run keep their order, are all done when ``flush``/``wait`` return, never copy a
file before it is written or while it is rewritten, and a failure is raised, not lost."""

import time

import pytest
import torch

from labbook.run.background import Background
from labbook.run.checkpoints import CheckpointUpload


def test_work_runs_in_order_and_wait_means_done():
    bg, seen = Background("test"), []
    for i in range(5):
        bg.submit(lambda i=i: (time.sleep(0.01), seen.append(i)))
    bg.wait()
    assert seen == [0, 1, 2, 3, 4]
    assert bg.cpu_s >= 0


def test_a_failure_is_raised_by_the_next_call():
    bg = Background("test")
    bg.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        bg.wait()
    bg.wait()  # reported once


def test_metrics_reach_the_store_by_flush(tmp_path):
    from mlflow.tracking import MlflowClient

    from labbook.run.metrics_logger import MLflowMetricsLogger
    from labbook.store.prepare import prepare_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_store(uri)
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    logger = MLflowMetricsLogger(client, run_id, flush_every_s=0)  # every call hands a write to the thread
    for step in range(20):
        logger.log_metrics({"loss": float(step)}, step)
    logger.flush()
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [float(s) for s in range(20)]


class _Run:
    """A run whose copy of a file into the store takes a while, as a big checkpoint's does."""

    def __init__(self):
        self.stored = []
        self.logger = None  # no metrics logged

    def log_file(self, path, artifact_file):
        time.sleep(0.2)
        self.stored.append((torch.load(path)["w"].tolist(), artifact_file))


def test_checkpoints_are_written_and_copied_in_order_from_a_snapshot(tmp_path):
    """The training thread hands a checkpoint over and goes on changing its tensors (the next steps); the file
    has the values of the moment it was handed over, its copy into the store follows its write, and the next
    write of the same file waits for that copy."""
    from labbook.run.checkpoints import BackgroundCheckpointIO

    files, run = Background("test"), _Run()
    io = BackgroundCheckpointIO(files)
    upload = CheckpointUpload(run, every_s=0, background=files)
    path = str(tmp_path / "last.ckpt")
    w = torch.zeros(3)
    for epoch in (1, 2):
        w.fill_(epoch)
        io.save_checkpoint({"w": w}, path)
        upload(path)  # both return at once
        upload.on_train_epoch_start(None, None)  # the next epoch starts: the copy is queued, after the metrics
        w.fill_(-1)  # training goes on
    io.save_checkpoint({"w": torch.full((3,), 7.0)}, str(tmp_path / "best.ckpt"))
    io.remove_checkpoint(str(tmp_path / "best.ckpt"))
    assert io.load_checkpoint(path)["w"].tolist() == [2.0] * 3  # reading waits for the queue
    assert not (tmp_path / "best.ckpt").exists()
    upload.flush()  # a signal or the end of training: every write and copy done
    assert run.stored == [([1.0] * 3, "checkpoints/last.ckpt"), ([2.0] * 3, "checkpoints/last.ckpt")]


def test_the_training_thread_gets_the_gil_back_within_half_a_millisecond():
    import sys

    from labbook.run.background import SWITCH_INTERVAL_S

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default
        bg = Background("test")
        bg.submit(lambda: None)
        bg.wait()
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S) and SWITCH_INTERVAL_S <= 0.0005
    finally:
        sys.setswitchinterval(before)
