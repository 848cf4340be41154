"""labbook's Slurm launcher (``hydra/launcher=slurm``): Hydra's submitit launcher that waits for every job;
see :mod:`.slurm_launcher`."""
