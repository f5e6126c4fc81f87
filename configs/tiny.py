"""A tiny run for tests and smoke checks: two small models, 200 documents, 40 MLP steps.

.venv/bin/python experiments/run_all.py --config=configs/tiny.py --out=/tmp/tiny
"""

from lead_jax import config


def get_config() -> config.StudyConfig:
  cfg = config.StudyConfig(out="checkpoints/tiny", models=("paraphrase-MiniLM-L3-v2", "wordllama"))
  cfg.data.max_docs, cfg.data.n_train, cfg.data.n_val = 200, 150, 50
  cfg.closed_form.folds = 2
  cfg.mlp.depths, cfg.mlp.steps = (1,), 40
  cfg.retrieval.curve_sizes = (50, 100)
  return cfg
