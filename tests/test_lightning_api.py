"""The private Lightning API that labbook.train.ranks leans on. If a test here fails after a Lightning upgrade,
re-read Lightning's ``_SubprocessScriptLauncher.launch`` and update ``labbook/workers.py::_supervise``, whose
``WatchedLauncher.launch`` repeats it with labbook's worker watch in place of Lightning's process observer;
then widen the ``pytorch-lightning`` pin in pyproject.toml."""

from __future__ import annotations

import inspect
import textwrap

import pytorch_lightning as pl

FIX = "Lightning's private launcher API changed: update labbook/workers.py::_supervise (see this file's doc)"

# The statements of _SubprocessScriptLauncher.launch that WatchedLauncher.launch repeats, in order.
LAUNCH_BODY = [
    "self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)",
    "if not self.cluster_environment.creates_processes_externally:",
    "self._call_children_scripts()",
    "_launch_process_observer(self.procs)",
    "_set_num_threads_if_needed(num_processes=self.num_processes)",
    "return function(*args, **kwargs)",
]


def test_subprocess_script_launcher_is_what_labbook_replaces() -> None:
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    params = list(inspect.signature(_SubprocessScriptLauncher.__init__).parameters)
    assert params == ["self", "cluster_environment", "num_processes", "num_nodes"], (FIX, params)
    for name in ("_call_children_scripts", "kill", "launch"):
        assert callable(getattr(_SubprocessScriptLauncher, name, None)), (FIX, name)
    source = textwrap.dedent(inspect.getsource(_SubprocessScriptLauncher.launch))
    code = [line.strip() for line in source.split('"""')[-1].splitlines() if line.strip()]
    assert code == LAUNCH_BODY, (FIX, code)


def test_a_ddp_trainer_holds_that_launcher_and_it_knows_its_workers() -> None:
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)
    launcher = trainer.strategy._launcher
    assert type(launcher) is _SubprocessScriptLauncher, (FIX, type(launcher))
    assert (launcher.num_processes, launcher.num_nodes) == (2, 1) and launcher.procs == [], FIX
    assert launcher.cluster_environment is not None and not launcher.cluster_environment.creates_processes_externally


def test_the_private_helpers_labbook_imports_exist() -> None:
    from lightning_fabric.utilities.distributed import _set_num_threads_if_needed

    assert list(inspect.signature(_set_num_threads_if_needed).parameters) == ["num_processes"], FIX


def test_the_progress_and_loader_state_a_mid_epoch_stop_relies_on() -> None:
    """labbook.train.callbacks.StopOnSignal and labbook.datamodules.sharding.ResumableLoader read Lightning's loop
    progress, and rely on the fit loop storing (and restoring mid-epoch) the state of training loaders that
    have state_dict/load_state_dict."""
    from lightning_fabric.utilities.types import _Stateful
    from pytorch_lightning.loops.fit_loop import _FitLoop

    from labbook.datamodules.sharding import ResumableLoader

    fix = "Lightning's loop progress or loader-state API changed: update datamodules/sharding.py::ResumableLoader " \
          "and labbook/callbacks.py::StopOnSignal"
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    fit_loop = trainer.fit_loop
    assert isinstance(fit_loop, _FitLoop), fix
    assert isinstance(fit_loop.epoch_progress.current.processed, int), fix
    assert isinstance(fit_loop.epoch_progress.current.started, int), fix
    batches = fit_loop.epoch_loop.batch_progress
    assert isinstance(batches.current.processed, int) and isinstance(batches.is_last_batch, bool), fix
    assert isinstance(ResumableLoader([1, 2]), _Stateful), fix
    for name in ("_load_combined_loader_states", "on_save_checkpoint", "on_load_checkpoint"):
        assert "combined_loader" in inspect.getsource(getattr(_FitLoop, name)), (fix, name)


# The statements of _SubprocessScriptLauncher._call_children_scripts that WatchedLauncher's repeats (its
# command aside: labbook starts `python -m labbook.cli.commands` instead of re-running sys.argv).
CHILDREN_ENV = [
    'os.environ["MASTER_ADDR"] = self.cluster_environment.main_address',
    'os.environ["MASTER_PORT"] = str(self.cluster_environment.main_port)',
    'os.environ["NODE_RANK"] = str(self.cluster_environment.node_rank())',
    'os.environ["LOCAL_RANK"] = str(self.cluster_environment.local_rank())',
    'os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"',
    "for local_rank in range(1, self.num_processes):",
    'env_copy["LOCAL_RANK"] = f"{local_rank}"',
    "new_process = subprocess.Popen(command, env=env_copy, cwd=cwd)",
]


def test_children_scripts_set_the_environment_labbook_repeats() -> None:
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    source = inspect.getsource(_SubprocessScriptLauncher._call_children_scripts)
    missing = [line for line in CHILDREN_ENV if line not in source]
    assert not missing, (FIX, missing)


def test_a_checkpoint_keeps_the_datamodules_state_where_labbook_rebuild_reads_it(tmp_path) -> None:
    """labbook.config.rebuild reads a datamodule's state under its class's ``__qualname__`` (where Lightning's
    trainer saves ``datamodule.state_dict()`` and restores it from), and builds the model from the loaded
    checkpoint with Lightning's private ``_load_state`` (the step of ``load_from_checkpoint`` after reading)."""
    import torch
    from pytorch_lightning.core.saving import _load_state

    from labbook.config.rebuild import load_checkpoint, model_from_checkpoint, restore_datamodule
    from labbook.datamodules.polynomial import SineCurveDataModule
    from labbook.lightning_modules.polynomial import CubicPolynomial

    fix = "Lightning's checkpoint layout or _load_state changed: update labbook/config/rebuild.py"
    assert list(inspect.signature(_load_state).parameters) == ["cls", "checkpoint", "strict", "cls_kwargs_new"], fix

    class Stateful(SineCurveDataModule):
        def state_dict(self):
            return {"seen": self.n_points}

        def load_state_dict(self, state):
            self.restored = state

    model = CubicPolynomial()
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=Stateful(n_points=8, batch_size=8))
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    checkpoint = load_checkpoint(tmp_path / "c.ckpt")
    assert checkpoint[Stateful.__qualname__] == {"seen": 8}, (fix, sorted(checkpoint))
    served = Stateful()
    assert restore_datamodule(served, checkpoint) and served.restored == {"seen": 8}
    rebuilt = model_from_checkpoint(CubicPolynomial, checkpoint)
    assert not rebuilt.training and rebuilt.hparams == model.hparams
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
