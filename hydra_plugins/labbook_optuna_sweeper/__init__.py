"""labbook's Hydra sweeper on Optuna >= 4 (``hydra/sweeper=optuna``); see :mod:`.optuna_sweeper`."""
