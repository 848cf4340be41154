"""Store writes off the training thread (labbook.background): the periodic metrics flushes and the copies of
checkpoints into the run keep their order, are all done when ``flush``/``wait`` return, never copy a
file while it is rewritten, and a failure is raised, not lost."""

import threading
import time

import pytest

from labbook.background import Background
from labbook.train import CheckpointUpload


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

    from labbook.metrics_logger import MLflowMetricsLogger
    from labbook.store import prepare_store

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
        self.copying, self.stored = threading.Event(), []

    def log_file(self, path, artifact_file):
        self.copying.set()
        time.sleep(0.2)
        self.stored.append((open(path).read(), artifact_file))


def test_a_checkpoint_is_not_rewritten_under_its_copy(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_text("epoch 1")
    run = _Run()
    upload = CheckpointUpload(run, every_s=0)
    upload(str(path))  # returns at once: the copy runs in the background
    assert run.copying.wait(5)
    upload.wait(str(path))  # what ModelCheckpoint does before writing the file again
    path.write_text("epoch 2")
    upload(str(path))
    upload.flush()  # a signal or the end of training: every copy done
    assert run.stored == [("epoch 1", "checkpoints/last.ckpt"), ("epoch 2", "checkpoints/last.ckpt")]
