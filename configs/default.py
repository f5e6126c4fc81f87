"""The default job: WordNet subset (8,000 documents), the four offline models.

    .venv/bin/python experiments/run_all.py --config=configs/default.py

Every default lives in lead_jax/config.py; this file only names that config.
"""

from lead_jax import config


def get_config() -> config.StudyConfig:
  return config.StudyConfig()
