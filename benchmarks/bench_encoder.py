"""Flax encoders against PyTorch transformers on the same machine, same texts, same batches.

    python benchmarks/bench_encoder.py            # all-MiniLM-L6-v2 and all-mpnet-base-v2, CPU, fp32, batch 64
    python benchmarks/bench_encoder.py --quick    # fewer batches
    python benchmarks/bench_encoder.py --quick --max_isa=avx2   # both sides capped at AVX2
    python benchmarks/bench_encoder.py --gpu      # random bge-large config, bf16, seq 256: sequences/s and MFU

CPU mode: both sides get identical token batches (length-sorted WordNet texts,
padded to the batch's longest rounded up to 8), run forward + mean pooling +
normalize, and are timed over all batches; the median of `--repeats` passes is
reported. The Flax side compiles with the runner's XLA options (`runner.compiler_options`);
the runner's packing is not used here (identical batches; see bench_embed.py for it). ratio = torch_s / flax_s (> 1 means Flax is faster). The last stdout
line is the JSON summary.
"""

import argparse
import functools
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def texts_for_bench(n: int) -> list[str]:
  from lead_jax import data

  ds = data.load("wordnet")
  docs = [data.beir.doc_text(*ds.corpus[d]) for d in list(ds.corpus)[: n // 2]]
  queries = list(ds.queries.values())[: n - len(docs)]
  return docs + queries


def make_batches(enc, texts, batch):
  ids = [e.ids for e in enc.tokenizer.encode_batch(texts)]
  order = np.argsort([len(t) for t in ids], kind="stable")
  out = []
  for s in range(0, len(order), batch):
    idx = order[s : s + batch]
    L = -(-max(len(ids[i]) for i in idx) // 8) * 8
    x = np.full((len(idx), L), enc.pad_token_id, np.int32)
    m = np.zeros((len(idx), L), np.int32)
    for r, i in enumerate(idx):
      x[r, : len(ids[i])] = ids[i]
      m[r, : len(ids[i])] = 1
    out.append((x, m))
  return out


def bench_model(name: str, n_texts: int, batch: int, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  import torch
  import transformers

  from lead_jax.encoders import loader, registry, runner

  torch.set_num_threads(os.cpu_count() or 1)
  d = registry.resolve_model_dir(name)
  enc = loader.load_hf_encoder(d)
  batches = make_batches(enc, texts_for_bench(n_texts), batch)

  # compiled as the runner compiles its forward passes (its XLA:CPU options)
  @functools.partial(jax.jit, compiler_options=runner.compiler_options())
  def flax_fn(params, ids, mask):
    return loader.l2_normalize(enc.embed_fn(params, ids, mask))

  params = jax.device_put(enc.params)
  tmodel = transformers.AutoModel.from_pretrained(str(d), local_files_only=True).eval()

  def torch_fn(ids, mask):
    with torch.inference_mode():
      h = tmodel(
          input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
      )[0]
      mk = torch.from_numpy(mask).float()[..., None]
      e = (h * mk).sum(1) / mk.sum(1).clamp(min=1e-9)
      return torch.nn.functional.normalize(e, dim=-1).numpy()

  def run_flax():
    outs = [flax_fn(params, jnp.asarray(x), jnp.asarray(m)) for x, m in batches]
    return [np.asarray(o) for o in outs]

  def run_torch():
    return [torch_fn(x, m) for x, m in batches]

  f_out, t_out = run_flax(), run_torch()  # warm-up: compiles every shape once
  diff = max(float(np.abs(a - b).max()) for a, b in zip(f_out, t_out))
  f_times, t_times = [], []
  for _ in range(repeats):  # interleave so machine noise hits both sides alike
    t0 = time.perf_counter()
    run_flax()
    f_times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    run_torch()
    t_times.append(time.perf_counter() - t0)
  f_s, t_s = statistics.median(f_times), statistics.median(t_times)
  n_tok = int(sum(m.sum() for _, m in batches))
  return {
      "model": name,
      "texts": n_texts,
      "batches": len(batches),
      "tokens": n_tok,
      "flax_s": f_s,
      "torch_s": t_s,
      "ratio": t_s / f_s,
      "max_abs_diff": diff,
      "flax_seq_per_s": n_texts / f_s,
      "torch_seq_per_s": n_texts / t_s,
  }


def bench_gpu(batch: int, seq: int, repeats: int) -> dict:
  """Random weights in bge-large-en-v1.5's config, bf16 compute, fixed length: throughput and MFU."""
  import jax
  import jax.numpy as jnp

  from lead_jax.encoders import bert

  cfg = bert.BertConfig.from_hf_config(
      {
          "model_type": "bert",
          "vocab_size": 30522,
          "hidden_size": 1024,
          "num_hidden_layers": 24,
          "num_attention_heads": 16,
          "intermediate_size": 4096,
          "hidden_act": "gelu",
          "max_position_embeddings": 512,
          "type_vocab_size": 2,
          "layer_norm_eps": 1e-12,
          "pad_token_id": 0,
      }
  )
  model = bert.BertModel(cfg, dtype=jnp.bfloat16)
  ids = jax.random.randint(jax.random.key(0), (batch, seq), 1, cfg.vocab_size, jnp.int32)
  mask = jnp.ones((batch, seq), jnp.int32)
  params = jax.jit(model.init)(jax.random.key(1), ids, mask)
  fwd = jax.jit(lambda p, i, m: model.apply(p, i, m)[:, 0].astype(jnp.float32))
  fwd(params, ids, mask).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fwd(params, ids, mask).block_until_ready()
    times.append(time.perf_counter() - t0)
  s = statistics.median(times)
  H, L, F, n_layers = 1024, seq, 4096, 24
  flops = (
      batch * n_layers * (8 * L * H * H + 4 * L * F * H + 4 * L * L * H)
  )  # matmul FLOPs per forward
  kind = jax.devices()[0].device_kind
  peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}.get(
      next((k for k in ("H100", "H200", "A100") if k in kind), ""), None
  )
  return {
      "name": "encoder_gpu_bge_large_bf16",
      "device": kind,
      "batch": batch,
      "seq": seq,
      "seconds_per_batch": s,
      "seq_per_s": batch / s,
      "tflops": flops / s / 1e12,
      "mfu": (flops / s / peak) if peak else None,
  }


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--gpu", action="store_true")
  ap.add_argument("--models", default="all-MiniLM-L6-v2,all-mpnet-base-v2")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--texts", type=int, default=None)
  ap.add_argument("--repeats", type=int, default=None)
  ap.add_argument(
      "--max_isa",
      default="",
      help="cap both sides' vector ISA, e.g. avx2 (the issue's machine) on an AVX-512 one",
  )
  args = ap.parse_args()
  if args.max_isa:  # before jax and torch load (both are imported lazily, in bench_model)
    from benchmarks import bench_embed

    os.environ.update(bench_embed.isa_env(args.max_isa))
  if args.gpu:
    r = bench_gpu(
        batch=args.batch if args.batch != 64 else 256, seq=256, repeats=args.repeats or 10
    )
    print(json.dumps(r))
    return
  n = args.texts or (256 if args.quick else 1024)
  repeats = args.repeats or (3 if args.quick else 5)
  load_before = os.getloadavg()
  rows = [bench_model(m, n, args.batch, repeats) for m in args.models.split(",")]
  load_after = os.getloadavg()
  for r in rows:
    print(json.dumps(r))
  flax_s, torch_s = sum(r["flax_s"] for r in rows), sum(r["torch_s"] for r in rows)
  from benchmarks import _common
  from lead_jax.encoders import runner

  cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
  print(
      json.dumps(
          {
              "name": "encoder_cpu_fp32",
              "ours_s": flax_s,
              "baseline_s": torch_s,
              "ratio": torch_s / flax_s,
              "max_abs_diff": max(r["max_abs_diff"] for r in rows),
              "per_model_ratio": {r["model"]: round(r["ratio"], 3) for r in rows},
              "batch": args.batch,
              "texts": n,
              "threads": os.cpu_count(),
              "compiler_options": runner.compiler_options(),
              "matmul_gflops": round(_common.matmul_rate() / 1e9, 1),
              "cpu_model": next(
                  (
                      ln.split(":", 1)[1].strip()
                      for ln in cpuinfo.splitlines()
                      if "model name" in ln
                  ),
                  "",
              ),
              "cpu_avx512": "avx512f" in cpuinfo,
              "max_isa": args.max_isa or None,
              "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
          }
      )
  )


if __name__ == "__main__":
  main()
