"""Embeds a dataset's rows with one or more models into the resumable store.

    python experiments/embed.py --dataset=wordnet \
        --models=all-MiniLM-L6-v2,all-mpnet-base-v2,paraphrase-MiniLM-L3-v2,wordllama --max_docs=2000

    OPENAI_API_KEY=… python experiments/embed.py --dataset=wordnet --models=openai/text-embedding-3-small

Complete arrays are skipped; partial ones resume at their last committed block.
Rows: for each split (train, val), the chunks of its documents (kind=corpus) and
its queries (kind=query), identical for every model.
"""
import dataclasses
import json
import time

import jax.numpy as jnp
from absl import app, flags, logging

from lead_jax import data, store
from lead_jax.data import chunking
from lead_jax.encoders import openai_encoder, runner

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "wordnet", "'wordnet' (shipped) or a BEIR directory.")
flags.DEFINE_list("models", ["all-MiniLM-L6-v2"], "Comma list of registry names or model directories.")
flags.DEFINE_list("split", ["train", "val"], "Splits to embed.")
flags.DEFINE_list("kind", ["corpus", "query"], "Row kinds to embed.")
flags.DEFINE_integer("max_docs", None, "Cap on train+val documents.")
flags.DEFINE_integer("n_train", 20_000, "Train documents cap.")
flags.DEFINE_integer("n_val", 5_000, "Validation documents cap.")
flags.DEFINE_integer("seed", 0, "Seed of the document cap/split.")
flags.DEFINE_string("qrels_split", None, "qrels/<split>.tsv to use (default: test, else the first).")
flags.DEFINE_integer("chunk_tokens", 256, "Chunk window, cl100k tokens.")
flags.DEFINE_integer("chunk_overlap", 25, "Overlap between chunks, tokens.")
flags.DEFINE_string("out", "checkpoints/store", "Store root.")
flags.DEFINE_integer("batch_size", 64, "Sequences per forward pass (rounded up to a multiple of the devices).")
flags.DEFINE_integer("block_rows", 2048, "Rows per committed store block (the most a kill can lose).")
flags.DEFINE_bool("bf16", False, "bf16 compute (GPU/TPU); fp32 otherwise.")
flags.DEFINE_enum("store_dtype", "float32", store.DTYPES, "On-disk dtype.")
flags.DEFINE_bool("allow_pickle", False, "Allow loading pytorch_model.bin (pickle) weights.")
flags.DEFINE_bool("overwrite", False, "Re-embed arrays whose metadata differs instead of refusing.")
flags.DEFINE_string("openai_api_key", None, "OpenAI key (default: $OPENAI_API_KEY). Never logged or stored.")
flags.DEFINE_integer("openai_dimensions", None, "`dimensions` for text-embedding-3 models.")
flags.DEFINE_integer("openai_concurrency", 4, "Concurrent OpenAI requests.")
flags.DEFINE_integer("openai_batch_size", 512, "Inputs per OpenAI request (API cap 2048).")
flags.DEFINE_integer("openai_max_retries", 8, "Retries per OpenAI request before failing.")
flags.DEFINE_float("openai_timeout", 60.0, "Seconds before an OpenAI request times out (then retried).")


def run(*, dataset, models, splits=("train", "val"), kinds=("corpus", "query"), out="checkpoints/store",
        max_docs=None, n_train=20_000, n_val=5_000, seed=0, qrels_split=None,
        chunk_cfg=chunking.ChunkConfig(), batch_size=64, block_rows=2048, bf16=False,
        store_dtype="float32", allow_pickle=False, overwrite=False, openai_cfg=None, openai_api_key=None) -> dict:
    ds = data.load(dataset, qrels_split)
    split_map = data.split_dataset(ds, n_train=n_train, n_val=n_val, max_docs=max_docs, seed=seed)
    rows = {(s, k): data.build_rows(ds, split_map[s], k, chunk_cfg) for s in splits for k in kinds}
    summary = {}
    for name in models:
        pending = [r for r in rows.values() if not store.is_complete(out, ds.name, r.split, r.kind, name)]
        if not pending:
            logging.info("%s: all arrays complete, skipping", name)
            summary[name] = "complete"
            continue
        t0 = time.time()
        if name.startswith(openai_encoder.PREFIX):
            cfg = dataclasses.replace(openai_cfg or openai_encoder.OpenAIConfig(model=""),
                                      model=openai_encoder.api_name(name))
            emb = openai_encoder.OpenAIEmbedder(cfg, api_key=openai_api_key)
            embed, dim, model_meta, prefixes = emb.embed, emb.dim, emb.meta(), ("", "")
            final = emb.counters  # per array: each call reports and resets
        else:
            prep = runner.load_encoder(name, compute_dtype=jnp.bfloat16 if bf16 else jnp.float32,
                                       allow_pickle=allow_pickle)
            run_ = runner.Runner(prep.encoder, normalize=prep.spec.normalize, batch_size=batch_size)
            embed, dim, model_meta, final = run_.embed, int(prep.encoder.dim), prep.meta, None
            prefixes = (prep.spec.query_prefix, prep.spec.passage_prefix)
        meta = {**model_meta, "chunker": chunk_cfg.to_json(), "dataset_seed": seed, "qrels_split": ds.qrels_split}
        for r in pending:
            prefix = prefixes[0] if r.kind == "query" else prefixes[1]
            runner.embed_rows_to_store(embed, dim, r, out, name, prefix=prefix, meta=meta, dtype=store_dtype,
                                       block_rows=block_rows, overwrite=overwrite, final_meta=final)
        summary[name] = {"seconds": round(time.time() - t0, 1), "rows": sum(len(r) for r in pending)}
    return summary


def main(argv):
    del argv
    summary = run(dataset=FLAGS.dataset, models=FLAGS.models, splits=FLAGS.split, kinds=FLAGS.kind,
                  out=FLAGS.out, max_docs=FLAGS.max_docs, n_train=FLAGS.n_train, n_val=FLAGS.n_val,
                  seed=FLAGS.seed, qrels_split=FLAGS.qrels_split,
                  chunk_cfg=chunking.ChunkConfig(FLAGS.chunk_tokens, FLAGS.chunk_overlap),
                  batch_size=FLAGS.batch_size, block_rows=FLAGS.block_rows, bf16=FLAGS.bf16,
                  store_dtype=FLAGS.store_dtype, allow_pickle=FLAGS.allow_pickle, overwrite=FLAGS.overwrite,
                  openai_cfg=openai_encoder.OpenAIConfig(
                      model="", dimensions=FLAGS.openai_dimensions, concurrency=FLAGS.openai_concurrency,
                      batch_size=FLAGS.openai_batch_size, max_retries=FLAGS.openai_max_retries,
                      timeout_s=FLAGS.openai_timeout),
                  openai_api_key=FLAGS.openai_api_key)
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
