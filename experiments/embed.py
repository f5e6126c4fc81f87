"""Embeds a dataset's rows with one or more models into the resumable store.

    python experiments/embed.py --dataset=wordnet \
        --models=all-MiniLM-L6-v2,all-mpnet-base-v2,paraphrase-MiniLM-L3-v2,wordllama --max_docs=2000

    OPENAI_API_KEY=… python experiments/embed.py --dataset=wordnet --models=openai/text-embedding-3-small

Complete arrays are skipped; partial ones resume at their last committed block.
Rows: for each split (train, val), the chunks of its documents (kind=corpus) and
its queries (kind=query), identical for every model.
"""

import json

from absl import app, flags

from lead_jax import data, distributed, store
from lead_jax.data import chunking
from lead_jax.encoders import openai_encoder, runner

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "wordnet", "'wordnet' (shipped) or a BEIR directory.")
flags.DEFINE_list(
    "models", ["all-MiniLM-L6-v2"], "Comma list of registry names or model directories."
)
flags.DEFINE_list("split", ["train", "val"], "Splits to embed.")
flags.DEFINE_list("kind", ["corpus", "query"], "Row kinds to embed.")
flags.DEFINE_integer("max_docs", None, "Cap on train+val documents.")
flags.DEFINE_integer("n_train", 20_000, "Train documents cap.")
flags.DEFINE_integer("n_val", 5_000, "Validation documents cap.")
flags.DEFINE_integer("seed", 0, "Seed of the document cap/split.")
flags.DEFINE_string(
    "qrels_split", None, "qrels/<split>.tsv to use (default: test, else the first)."
)
flags.DEFINE_integer("chunk_tokens", 256, "Chunk window, cl100k tokens.")
flags.DEFINE_integer("chunk_overlap", 25, "Overlap between chunks, tokens.")
flags.DEFINE_string("out", "checkpoints/store", "Store root.")
flags.DEFINE_integer(
    "batch_size", 64, "Sequences per forward pass (rounded up to a multiple of the devices)."
)
flags.DEFINE_integer(
    "block_rows", 2048, "Rows per committed store block (the most a kill can lose)."
)
flags.DEFINE_bool("bf16", False, "bf16 compute (GPU/TPU); fp32 otherwise.")
flags.DEFINE_enum("store_dtype", "float32", store.DTYPES, "On-disk dtype.")
flags.DEFINE_bool("allow_pickle", False, "Allow loading pytorch_model.bin (pickle) weights.")
flags.DEFINE_bool("overwrite", False, "Re-embed arrays whose metadata differs instead of refusing.")
flags.DEFINE_string(
    "openai_api_key", None, "OpenAI key (default: $OPENAI_API_KEY). Never logged or stored."
)
flags.DEFINE_integer("openai_dimensions", None, "`dimensions` for text-embedding-3 models.")
flags.DEFINE_integer("openai_concurrency", 4, "Concurrent OpenAI requests.")
flags.DEFINE_integer("openai_batch_size", 512, "Inputs per OpenAI request (API cap 2048).")
flags.DEFINE_integer("openai_max_retries", 8, "Retries per OpenAI request before failing.")
flags.DEFINE_float(
    "openai_timeout", 60.0, "Seconds before an OpenAI request times out (then retried)."
)


def main(argv):
  del argv
  distributed.initialize_from_flags()
  try:
    summary = _main()
  except (
      data.DataError,
      store.StoreError,
      openai_encoder.OpenAIEmbeddingError,
      FileNotFoundError,
  ) as e:
    raise SystemExit(f"error: {e}") from None
  print(json.dumps(summary))


def _main():
  return runner.embed_dataset(
      dataset=FLAGS.dataset,
      models=FLAGS.models,
      splits=FLAGS.split,
      kinds=FLAGS.kind,
      out=FLAGS.out,
      max_docs=FLAGS.max_docs,
      n_train=FLAGS.n_train,
      n_val=FLAGS.n_val,
      seed=FLAGS.seed,
      qrels_split=FLAGS.qrels_split,
      chunk_cfg=chunking.ChunkConfig(FLAGS.chunk_tokens, FLAGS.chunk_overlap),
      batch_size=FLAGS.batch_size,
      block_rows=FLAGS.block_rows,
      bf16=FLAGS.bf16,
      store_dtype=FLAGS.store_dtype,
      allow_pickle=FLAGS.allow_pickle,
      overwrite=FLAGS.overwrite,
      openai_cfg=openai_encoder.OpenAIConfig(
          model="",
          dimensions=FLAGS.openai_dimensions,
          concurrency=FLAGS.openai_concurrency,
          batch_size=FLAGS.openai_batch_size,
          max_retries=FLAGS.openai_max_retries,
          timeout_s=FLAGS.openai_timeout,
      ),
      openai_api_key=FLAGS.openai_api_key,
  )


if __name__ == "__main__":
  app.run(main)
