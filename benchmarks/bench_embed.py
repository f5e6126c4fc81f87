"""End to end embedding against sentence-transformers, as a user meets it: fresh processes.

    .venv/bin/python benchmarks/bench_embed.py            # 1,500 train rows, MiniLM + mpnet, 3 rounds
    .venv/bin/python benchmarks/bench_embed.py --quick    # 200 rows, 1 round (< 1 min)
    .venv/bin/python benchmarks/bench_embed.py --max_isa=avx2   # both sides capped at AVX2

The rows are the default job's WordNet `train/corpus` rows (configs/default.py, through
`lead_jax.pipeline.embed.split_rows`), the first `--rows` of them, with each model's
passage prefix. Every sample is a fresh Python process that imports, loads the model,
compiles and embeds every row, and saves the vectors; its wall time (interpreter start to
exit) is what a user waits:

* ours: `runner.load_encoder` + `runner.Runner(...).embed` as `lead_jax.pipeline.embed`
  runs them, with the persistent compilation cache on as the pipeline turns it on. "cold":
  an empty cache directory (every program compiles, and is written to the cache); "warm":
  the directory the cold run just filled (a rerun, or a later stage process).
* baseline: sentence-transformers `SentenceTransformer(<the same local directory>,
  device="cpu").encode(texts, batch_size=64, normalize_embeddings=True)` after
  `torch.set_num_threads(<cpus>)`.

Both sides are pinned to the same `--cpus` CPUs; `--max_isa=avx2` caps both at AVX2 (XLA's
`--xla_cpu_max_isa`, torch's `ATEN_CPU_CAPABILITY` / `MKL_ENABLE_INSTRUCTIONS`), as on the
issue's 2-core AVX2 machine. Rounds interleave the three kinds of
sample (the order rotates), so machine noise hits all alike; figures are medians over
rounds. One untimed ours and baseline run first warm the OS file cache (not with --quick). ratio =
baseline_s / ours_s (> 1: ours is faster); the top-level `ours_s` is the cold-cache
figure, `ratio_warm` the warm one. `max_abs_diff` is between the two sides' normalised
vectors. The last stdout line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2")


def _pin(cpus: int) -> None:
  if hasattr(os, "sched_setaffinity"):
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cpus])


def child_ours(model: str, rows_file: str, cache: str, out: str, cpus: int) -> dict:
  """One fresh-process run of our embed path; returns its phase timings."""
  t0 = time.perf_counter()
  _pin(cpus)
  sys.path.insert(0, str(ROOT))
  import numpy as np

  from lead_jax.encoders import runner
  from lead_jax.pipeline import _common

  _common.use_compilation_cache(cache)
  texts = json.loads(pathlib.Path(rows_file).read_text())
  t1 = time.perf_counter()
  prep = runner.load_encoder(model)
  run = runner.Runner(prep.encoder, normalize=prep.spec.normalize, batch_size=64)
  dim = int(prep.encoder.dim)  # as the embed stage asks for it
  t2 = time.perf_counter()
  emb = run.embed([prep.spec.passage_prefix + t for t in texts])
  t3 = time.perf_counter()
  assert emb.shape == (len(texts), dim)
  np.save(out, emb)
  return {"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2}


def child_st(model: str, rows_file: str, out: str, cpus: int) -> dict:
  """One fresh-process run of sentence-transformers `encode`; returns its phase timings."""
  t0 = time.perf_counter()
  _pin(cpus)
  import numpy as np
  import torch

  torch.set_num_threads(cpus)
  from sentence_transformers import SentenceTransformer

  sys.path.insert(0, str(ROOT))
  from lead_jax.encoders import registry

  texts = json.loads(pathlib.Path(rows_file).read_text())
  t1 = time.perf_counter()
  spec = registry.get(model)
  m = SentenceTransformer(
      str(registry.resolve_model_dir(model)), device="cpu", local_files_only=True
  )
  t2 = time.perf_counter()
  emb = m.encode(
      [spec.passage_prefix + t for t in texts],
      batch_size=64,
      normalize_embeddings=True,
      convert_to_numpy=True,
      show_progress_bar=False,
  )
  t3 = time.perf_counter()
  np.save(out, np.asarray(emb, np.float32))
  return {"import_s": t1 - t0, "load_s": t2 - t1, "embed_s": t3 - t2}


def _spawn(args: list[str], env: dict) -> tuple[float, dict]:
  t = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, __file__, *args], cwd=ROOT, env=env, capture_output=True, text=True
  )
  wall = time.perf_counter() - t
  if proc.returncode != 0:
    sys.stderr.write(proc.stderr[-4000:])
    raise SystemExit(f"child {args[:3]} failed ({proc.returncode})")
  return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def _rows(n: int) -> list[str]:
  from lead_jax import config
  from lead_jax.pipeline import embed

  _, _, rows = embed.split_rows(config.StudyConfig(), ("train/corpus",))
  texts = list(rows["train", "corpus"].texts)
  if len(texts) < n:
    raise SystemExit(f"the default job has only {len(texts)} train/corpus rows")
  return texts[:n]


def _cpu_facts() -> dict:
  info = pathlib.Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
  model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
  flags = next(
      (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
  )
  return {
      "cpu_model": model,
      "cpu_avx512": "avx512f" in flags,
      "cpu_avx2": "avx2" in flags,
      "cpus_online": os.cpu_count(),
  }


def isa_env(max_isa: str) -> dict:
  """Environment capping both sides' vector ISA (e.g. AVX2 on an AVX-512 machine), or {}."""
  if not max_isa:
    return {}
  flags = (os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_max_isa={max_isa.upper()}").strip()
  return {
      "XLA_FLAGS": flags,  # XLA's own code generation
      "ATEN_CPU_CAPABILITY": max_isa.lower(),  # torch's vectorised kernels
      "MKL_ENABLE_INSTRUCTIONS": max_isa.upper(),  # torch's matmuls
      "ONEDNN_MAX_CPU_ISA": max_isa.upper(),
  }


def bench_model(
    model: str,
    rows_file: str,
    tmp: pathlib.Path,
    cpus: int,
    rounds: int,
    warmup: bool,
    max_isa: str = "",
) -> dict:
  import numpy as np

  env = {
      **os.environ,
      "JAX_PLATFORMS": "cpu",
      "TRANSFORMERS_VERBOSITY": "error",
      "HF_HUB_OFFLINE": "1",
      "TOKENIZERS_PARALLELISM": "true",
      **isa_env(max_isa),
  }
  common = ["--rows_file", rows_file, "--cpus", str(cpus), "--model", model]
  st_out, ours_out = str(tmp / f"{model}_st.npy"), str(tmp / f"{model}_ours.npy")

  def ours(cache: pathlib.Path):
    return _spawn(["--child", "ours", *common, "--cache", str(cache), "--out", ours_out], env)

  def st():
    return _spawn(["--child", "st", *common, "--out", st_out], env)

  if warmup:  # untimed: the OS file cache holds both sides' files from here on
    ours(tmp / f"{model}_warmup_cache")
    st()
  samples: dict[str, list] = {"cold": [], "warm": [], "st": []}
  for r in range(rounds):
    cache = tmp / f"{model}_cache_{r}"
    shutil.rmtree(cache, ignore_errors=True)

    def cold(cache=cache):
      samples["cold"].append(ours(cache))

    def warm(cache=cache):
      samples["warm"].append(ours(cache))

    def base():
      samples["st"].append(st())

    for step in ((cold, warm, base), (base, cold, warm), (cold, base, warm))[r % 3]:
      step()
  diff = float(np.abs(np.load(ours_out) - np.load(st_out)).max())

  def med(kind: str) -> float:
    return statistics.median(w for w, _ in samples[kind])

  def phases(kind: str) -> dict:
    keys = samples[kind][0][1]
    return {k: round(statistics.median(p[k] for _, p in samples[kind]), 3) for k in keys}

  cold_s, warm_s, st_s = med("cold"), med("warm"), med("st")
  return {
      "model": model,
      "ours_cold_s": cold_s,
      "ours_warm_s": warm_s,
      "st_s": st_s,
      "ratio_cold": st_s / cold_s,
      "ratio_warm": st_s / warm_s,
      "max_abs_diff": diff,
      "ours_cold_phases": phases("cold"),
      "ours_warm_phases": phases("warm"),
      "st_phases": phases("st"),
      "walls": {k: [round(w, 2) for w, _ in v] for k, v in samples.items()},
      "min_s": {k: round(min(w for w, _ in v), 2) for k, v in samples.items()},
  }


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--models", default=",".join(MODELS))
  ap.add_argument("--rows", type=int, default=None, help="rows (default 1500; --quick 200)")
  ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --quick 1)")
  ap.add_argument("--cpus", type=int, default=2, help="CPUs both sides run on")
  ap.add_argument(
      "--max_isa",
      default="",
      help="cap both sides' vector ISA, e.g. avx2 (the issue's machine) on an AVX-512 one",
  )
  ap.add_argument(
      "--warmup",
      action=argparse.BooleanOptionalAction,
      default=None,
      help="one untimed run of each side first (default: on; --quick: off)",
  )
  ap.add_argument("--child", choices=("ours", "st"), help=argparse.SUPPRESS)
  ap.add_argument("--model", help=argparse.SUPPRESS)
  ap.add_argument("--rows_file", help=argparse.SUPPRESS)
  ap.add_argument("--cache", help=argparse.SUPPRESS)
  ap.add_argument("--out", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child == "ours":
    print(json.dumps(child_ours(args.model, args.rows_file, args.cache, args.out, args.cpus)))
    return
  if args.child == "st":
    print(json.dumps(child_st(args.model, args.rows_file, args.out, args.cpus)))
    return

  n = args.rows or (200 if args.quick else 1500)
  rounds = args.rounds or (1 if args.quick else 3)
  warmup = (not args.quick) if args.warmup is None else args.warmup
  tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_embed_"))
  try:
    rows_file = tmp / "rows.json"
    rows_file.write_text(json.dumps(_rows(n)))
    load_before = os.getloadavg()
    per_model = [
        bench_model(m, str(rows_file), tmp, args.cpus, rounds, warmup, args.max_isa)
        for m in args.models.split(",")
    ]
    load_after = os.getloadavg()
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  for r in per_model:
    print(json.dumps(r), flush=True)

  _pin(args.cpus)
  sys.path.insert(0, str(ROOT))
  from benchmarks import _common

  ours_s = sum(r["ours_cold_s"] for r in per_model)
  warm_s = sum(r["ours_warm_s"] for r in per_model)
  st_s = sum(r["st_s"] for r in per_model)
  print(
      json.dumps(
          {
              "name": "embed_end_to_end_cpu" + ("_quick" if args.quick else ""),
              "ours_s": ours_s,
              "baseline_s": st_s,
              "ratio": st_s / ours_s,
              "ours_warm_s": warm_s,
              "ratio_warm": st_s / warm_s,
              "max_abs_diff": max(r["max_abs_diff"] for r in per_model),
              "per_model": {
                  r["model"]: {
                      "ours_cold_s": round(r["ours_cold_s"], 2),
                      "ours_warm_s": round(r["ours_warm_s"], 2),
                      "st_s": round(r["st_s"], 2),
                      "ratio_cold": round(r["ratio_cold"], 3),
                      "ratio_warm": round(r["ratio_warm"], 3),
                      "max_abs_diff": r["max_abs_diff"],
                      "min_s": r["min_s"],
                  }
                  for r in per_model
              },
              "goals": {
                  f"{r['model']}_{kind}_ge_1.2x": r[f"ratio_{kind}"] >= 1.2
                  for r in per_model
                  for kind in ("cold", "warm")
              },
              "rows": n,
              "rounds": rounds,
              "warmup": warmup,
              "max_isa": args.max_isa or None,
              "cpus": args.cpus,
              "matmul_gflops": round(_common.matmul_rate() / 1e9, 1),
              **_cpu_facts(),
              "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
          }
      )
  )


if __name__ == "__main__":
  main()
