"""The study's caps: the whole dataset, at most 20,000 train / 5,000 val documents.

.venv/bin/python experiments/run_all.py --config=configs/full.py --out=checkpoints/full
"""

from lead_jax import config


def get_config() -> config.StudyConfig:
  cfg = config.StudyConfig(out="checkpoints/full")
  cfg.data.max_docs, cfg.data.n_train, cfg.data.n_val = 0, 20_000, 5_000
  return cfg
