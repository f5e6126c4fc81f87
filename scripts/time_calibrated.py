"""Times what issue 17 adds to the similarity stage (nulls, measures, unsupervised), cold.

    PYTHONPATH=. .venv/bin/python scripts/time_calibrated.py --out=checkpoints/default
    PYTHONPATH=. .venv/bin/python scripts/time_calibrated.py            # synthetic rows

With `--out`, the default job's stored train/val corpus rows are used; without, seeded
rows of the default shape (6,000 train + 2,000 val, widths 384/768/384/256). Each part
runs once in this fresh process with the compilation cache off, so compile time counts,
as it does on a first run. Prints one JSON line: seconds per part, their sum, a plain
matmul probe (GFLOP/s, to compare machines and load) and the CPU.
"""

import json
import pathlib
import sys
import time

import numpy as np


def _cpu() -> dict:
  info = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
  model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?")
  return {"cpu": model, "avx512": "avx512f" in info}


def _probe() -> float:
  import jax
  import jax.numpy as jnp

  a = jnp.asarray(np.random.default_rng(0).random((6000, 384), np.float32))
  b = jnp.asarray(np.random.default_rng(1).random((6000, 2176), np.float32))
  f = jax.jit(lambda a, b: jnp.einsum("nd,ne->de", a, b, precision="highest"))
  f(a, b).block_until_ready()
  t = time.time()
  for _ in range(5):
    f(a, b).block_until_ready()
  return 2 * 6000 * 384 * 2176 / ((time.time() - t) / 5) / 1e9


def main(argv):
  out = next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), "")
  from lead_jax import config, pipeline, store
  from lead_jax.pipeline import similarity

  cfg = config.StudyConfig()
  cfg.compilation_cache = ""
  if out:
    cfg.out = out
    layout = pipeline.RunLayout.from_config(cfg)
    names, xs = store.read_models(layout.store_root, "wordnet", "train", "corpus", cfg.models)
  else:
    rng = np.random.default_rng(0)
    names = [f"m{i}" for i in range(4)]
    lat = rng.normal(size=(8000, 64))
    full = [
        lat @ rng.normal(size=(64, d)) + rng.normal(size=(8000, d)) for d in (384, 768, 384, 256)
    ]
    xs = [(x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32) for x in full]
    val = [x[6000:] for x in xs]
    xs = [x[:6000] for x in xs]
    layout = pipeline.RunLayout.of("/tmp/time_calibrated_unused")
    store.read_models = lambda *a, **k: (names, val)  # the val rows, without a store
    from lead_jax import distributed

    distributed.is_writer = lambda: False  # time the maths, write nothing
  probe_before = _probe()
  t0 = time.time()
  res = similarity.calibrated(cfg, layout, "wordnet", names, xs)
  total = time.time() - t0
  print(
      json.dumps(
          {
              "name": "calibrated_similarity",
              "rows": int(len(xs[0])),
              "models": names,
              "seconds": res["seconds"],
              "total_s": round(total, 2),
              "matmul_gflops_before": round(probe_before, 1),
              "matmul_gflops_after": round(_probe(), 1),
              **_cpu(),
          }
      )
  )


if __name__ == "__main__":
  main(sys.argv[1:])
