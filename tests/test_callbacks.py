"""labbook's ModelCheckpoint: Lightning's, with a cached state key and a per-step fast path that must not
change what gets saved."""

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from labbook.lightning_modules.lstm import LSTMForecaster
from labbook.train.callbacks import ModelCheckpoint


def fit(tmp_path, **checkpoint_kwargs) -> list[str]:
    """The checkpoint files a 2-epoch, 3-steps-per-epoch fit leaves behind."""
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(12, 5, 1), torch.randn(12, 1)), batch_size=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, **checkpoint_kwargs)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, callbacks=[ckpt],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LSTMForecaster(hidden_size=4), data)
    return sorted(p.name for p in tmp_path.iterdir())


def test_state_key_is_lightnings(tmp_path):
    ours = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="max", every_n_train_steps=3)
    theirs = LightningModelCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="max", every_n_train_steps=3)
    assert ours.state_key == theirs.state_key  # checkpoints written by either load into the other


def test_per_epoch_saves_without_a_step_trigger(tmp_path):
    files = fit(tmp_path, filename="{epoch}-{step}", monitor="train/loss")
    assert files == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]


def test_step_trigger_still_saves_every_n_steps(tmp_path):
    # no monitor: Lightning would defer a step save until a monitored metric exists
    files = fit(tmp_path, filename="{step}", every_n_train_steps=2, save_on_train_epoch_end=False)
    assert files == ["step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]


def test_last_checkpoint_is_the_final_epoch_even_without_improvement(tmp_path):
    # lr = 0: val/loss never improves after epoch 0, so only epoch 0 is "best"; last.ckpt must still be
    # rewritten every epoch (Lightning 2.6 alone leaves it at the last improvement).
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(12, 5, 1), torch.randn(12, 1)), batch_size=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_top_k=1, save_last=True)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, logger=False, callbacks=[ckpt],
                         enable_progress_bar=False, enable_model_summary=False)
    model = LSTMForecaster(hidden_size=4, optimizer=lambda params: torch.optim.SGD(params, lr=0.0))
    trainer.fit(model, data, data)
    best, last = (torch.load(tmp_path / f"{name}.ckpt", weights_only=True) for name in ("best", "last"))
    assert (best["epoch"], best["global_step"]) == (0, 3)
    assert (last["epoch"], last["global_step"]) == (2, 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
