"""Embeds the dataset's rows with every model of the config into the resumable store.

    .venv/bin/python experiments/embed.py --models=all-MiniLM-L6-v2,wordllama --config.data.max_docs=2000
    OPENAI_API_KEY=… .venv/bin/python experiments/embed.py --models=openai/text-embedding-3-small

Arrays `config.embed.arrays` (split/kind) go to `config.store` (default `<out>/store`).
Complete arrays are skipped; partial ones resume at their last committed block. The rows
are identical for every model. See lead_jax/pipeline/embed.py.
"""

import _cli
from absl import flags

from lead_jax import pipeline, store
from lead_jax.encoders import openai_encoder

API_KEY = flags.DEFINE_string(
    "openai_api_key", None, "OpenAI key (default $OPENAI_API_KEY); never logged or stored."
)


def main(argv):
  del argv
  _cli.print_json(pipeline.run_stage(_cli.study_config(), "embed", openai_api_key=API_KEY.value))


if __name__ == "__main__":
  _cli.run(main, (store.StoreError, openai_encoder.OpenAIEmbeddingError))
