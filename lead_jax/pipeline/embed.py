"""Embed stage: every model's rows of every (split, kind) in `config.embed.arrays` → the store."""

from __future__ import annotations

import time

import jax.numpy as jnp
from absl import logging

from lead_jax import data, logs, store
from lead_jax.config import StudyConfig
from lead_jax.layout import RunLayout


def chunk_config(cfg: StudyConfig) -> data.ChunkConfig:
  """The corpus chunker of `cfg.data`.

  Args:
    cfg: the study config.

  Returns:
    `ChunkConfig(chunk_tokens, chunk_overlap)`.
  """
  return data.ChunkConfig(cfg.data.chunk_tokens, cfg.data.chunk_overlap)


def split_rows(cfg: StudyConfig, arrays=None) -> tuple[data.Dataset, dict, dict]:
  """The dataset, its train/val splits, and the rows of each `split/kind` in `arrays`.

  Args:
    cfg: the study config (`dataset`, `data`).
    arrays: `split/kind` strings; default `cfg.embed.arrays`.

  Returns:
    `(dataset, {split: Split}, {(split, kind): Rows})`.
  """
  d = cfg.data
  ds = data.load(cfg.dataset, d.qrels_split or None)
  splits = data.split_dataset(
      ds, n_train=d.n_train, n_val=d.n_val, max_docs=d.max_docs or None, seed=d.seed
  )
  rows = {}
  for sk in arrays or cfg.embed.arrays:
    split, kind = sk.split("/")
    rows[split, kind] = data.build_rows(ds, splits[split], kind, chunk_config(cfg))
  return ds, splits, rows


def encoder(cfg: StudyConfig, name: str, openai_api_key: str | None = None):
  """(embed fn, dim, model meta, final-meta fn, (query prefix, passage prefix)) of a model.

  The one way every stage and `lead_jax.migrate` get an encoder from a config: a Flax
  port through `encoders.runner`, or the OpenAI client (key from `openai_api_key`, else
  the environment).
  """
  from lead_jax.encoders import openai_encoder, runner

  e = cfg.embed
  if name.startswith(openai_encoder.PREFIX):
    ocfg = openai_encoder.OpenAIConfig(
        model=openai_encoder.api_name(name),
        dimensions=e.openai_dimensions or None,
        concurrency=e.openai_concurrency,
        batch_size=e.openai_batch_size,
        max_retries=e.openai_max_retries,
        timeout_s=e.openai_timeout_s,
    )
    emb = openai_encoder.OpenAIEmbedder(ocfg, api_key=openai_api_key)
    return emb.embed, emb.dim, emb.meta(), emb.counters, ("", "")  # counters: per array
  prep = runner.load_encoder(
      name, compute_dtype=jnp.bfloat16 if e.bf16 else jnp.float32, allow_pickle=e.allow_pickle
  )
  run = runner.Runner(prep.encoder, normalize=prep.spec.normalize, batch_size=e.batch_size)
  prefixes = (prep.spec.query_prefix, prep.spec.passage_prefix)
  return run.embed, int(prep.encoder.dim), prep.meta, None, prefixes


def run(cfg: StudyConfig, layout: RunLayout, openai_api_key: str | None = None) -> dict:
  """Embeds the configured rows with every model into `layout.store_root`.

  Complete arrays holding the same rows are skipped; partial ones resume at their last
  committed block. Names starting with "openai/" go through the OpenAI embedder (the key
  comes from `openai_api_key` or $OPENAI_API_KEY and is never logged or stored), the rest
  through the Flax runner.

  Args:
    cfg: the study config.
    layout: the run layout (its `store_root` is written).
    openai_api_key: an OpenAI key; None: the environment's.

  Returns:
    `{model: "complete" | {"seconds", "rows"}}`.
  """
  ds, _, rows = split_rows(cfg)
  d = cfg.data
  summary = {}
  for name in cfg.models:
    # an array with other rows (another cap or chunker) is not complete: the writer refuses it
    pending = [
        r
        for r in rows.values()
        if not store.is_complete(layout.store_root, ds.name, r.split, r.kind, name, r.digest)
    ]
    if not pending:
      logging.info("%s: all arrays complete, skipping", name)
      summary[name] = "complete"
      continue
    t0 = time.time()
    embed, dim, model_meta, final, (q_prefix, p_prefix) = encoder(cfg, name, openai_api_key)
    meta = {
        **model_meta,
        "chunker": chunk_config(cfg).to_json(),
        "dataset_seed": d.seed,
        "qrels_split": ds.qrels_split,
        "dataset_cap": {
            "n_train": d.n_train,
            "n_val": d.n_val,
            "max_docs": d.max_docs or None,
            "seed": d.seed,
        },
    }
    for r in pending:
      store.write_rows(
          embed,
          dim,
          r,
          layout.store_root,
          name,
          prefix=q_prefix if r.kind == "query" else p_prefix,
          meta=meta,
          dtype=cfg.embed.store_dtype,
          block_rows=cfg.embed.block_rows,
          overwrite=cfg.embed.overwrite,
          final_meta=final,
          log_every_s=logs.EVERY_S,  # the store logs the progress lines (rows/s, ETA)
      )
    summary[name] = {"seconds": round(time.time() - t0, 1), "rows": sum(len(r) for r in pending)}
  return summary
