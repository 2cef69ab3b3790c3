"""Studies over many runs: :mod:`latentquant.study.sweep` expands a model x dataset x seed grid into run
directories and runs them through submitit (locally or on Slurm); :mod:`latentquant.study.table` reads the
finished runs back as the paper's tables (mean ± 95% CI, aggregate column, bolding). CLI in ``study.cli``."""
