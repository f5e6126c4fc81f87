"""Run by tests/test_sharding.py with 8 forced CPU devices: every sharded path against one device.

Prints one JSON line of {check: max relative difference} plus trace counts; the test asserts.
"""

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lead_jax.similarity import cka as cka_lib  # noqa: E402
from lead_jax.stitch import closed_form as cf  # noqa: E402
from lead_jax.stitch import mlp  # noqa: E402

AUTO = jax.sharding.AxisType.Auto


def mesh(data, pairs):
  return jax.make_mesh((data, pairs), ("data", "pairs"), axis_types=(AUTO, AUTO))


def rel(a, b):
  """max |a − b| / max |b| over the finite entries of two pytrees."""
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(y)
    assert np.array_equal(ok, np.isfinite(x)), "NaN patterns differ"
    if ok.any():
      worst = max(worst, float(np.max(np.abs(x[ok] - y[ok])) / max(np.max(np.abs(y[ok])), 1e-30)))
  return worst


def fit_rel(got, ref):
  """rel() over a fit_all_pairs result; self-pair stitches (A→A, whose λ is an argmin over
  round-off: every λ fits exactly) are left out, as the tables leave them out (NaN)."""
  got, ref = dict(got), dict(ref)
  sg, sr = got.pop("stitches"), ref.pop("stitches")
  meta = ref.pop("meta")
  got.pop("meta")
  worst = rel(got, ref)
  off = np.asarray(meta["column_offsets"])
  for g, r, srcs in zip(sg, sr, meta["stitch_sources"]):
    for j, s in enumerate(srcs):
      keep = np.ones(off[-1], bool)
      keep[off[s] : off[s + 1]] = False
      worst = max(
          worst,
          rel(
              [np.asarray(g["W"])[j][:, keep], np.asarray(g["b"])[j][keep]],
              [np.asarray(r["W"])[j][:, keep], np.asarray(r["b"])[j][keep]],
          ),
      )
  return worst


def correlated(dims, n, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, 12))
  return [
      z @ rng.normal(size=(12, d)) + 0.5 * rng.normal(size=(n, d)) + rng.normal(size=d)
      for d in dims
  ]


def main():
  assert jax.device_count() == 8, jax.devices()
  out = {}
  dims = (6, 6, 10, 10, 10, 16)
  xs = correlated(dims, 96)
  tr, va = [x[:72] for x in xs], [x[72:] for x in xs]
  lam = [0.0, 1e-2, 1.0, 100.0]
  meshes = {"data8": mesh(8, 1), "data4_pairs2": mesh(4, 2), "pairs8": mesh(1, 8)}
  fit_meshes = {k: meshes[k] for k in ("data8", "data4_pairs2")}

  # CKA: rows sharded over data; Gram blocks are psums.
  ref = cka_lib.cka_all_pairs(xs, control_dim=8, dtype=jnp.float64)
  for name, m in meshes.items():
    out[f"cka_{name}"] = rel(
        cka_lib.cka_all_pairs(xs, control_dim=8, dtype=jnp.float64, mesh=m), ref
    )
  # Inputs that arrive already row-sharded (as global arrays of a multi-process run do).
  sh = jax.sharding.NamedSharding(meshes["data8"], jax.sharding.PartitionSpec("data", None))
  out["cka_presharded"] = rel(
      cka_lib.cka_all_pairs([jax.device_put(x, sh) for x in xs], control_dim=8, dtype=jnp.float64),
      ref,
  )

  # Ridge / OLS / Procrustes / controls / row metrics for every pair.
  kw = dict(control_dim=8, dtype=jnp.float64)
  ref = cf.fit_all_pairs(tr, va, lam, **kw)
  for name, m in fit_meshes.items():
    out[f"ridge_{name}"] = fit_rel(cf.fit_all_pairs(tr, va, lam, mesh=m, **kw), ref)
  # The sharded program really is distributed: a cross-device reduction over rows.
  layout = cf.gram_lib.make_layout(list(dims) + [8])
  m = meshes["data4_pairs2"]
  tr_c, va_c = cf._append_control(
      [[jnp.asarray(x) for x in xs] for xs in (tr, va)], 8, 0, jnp.float64, m
  )
  hlo = (
      cf._fit_impl.lower(
          tuple(tr_c),
          tuple(va_c),
          jnp.asarray(lam),
          cf._medians(va_c),
          cf._exact_ols(tr_c, va_c, layout, lam, jnp.float64),
          layout=layout,
          rcond=None,
          procrustes=True,
          spectra=True,
          predictions=True,
          mesh=m,
      )
      .compile()
      .as_text()
  )
  out["ridge_has_all_reduce"] = "all-reduce" in hlo

  # k-fold CV from per-fold Grams.
  ref = cf.cross_validate_all_pairs(xs, lam, n_folds=3, **kw)
  ref.pop("meta")
  got = cf.cross_validate_all_pairs(xs, lam, n_folds=3, mesh=meshes["data4_pairs2"], **kw)
  got.pop("meta")
  out["kfold_data4_pairs2"] = rel(got, ref)

  # Trace counts: repeated calls with the same shapes reuse one compiled program.
  n0 = cf._fit_impl._cache_size()
  for _ in range(3):
    cf.fit_all_pairs(tr, va, lam, mesh=meshes["data8"], **kw)
  out["fit_new_traces"] = cf._fit_impl._cache_size() - n0
  n0 = cka_lib._cka_impl._cache_size()
  for _ in range(3):
    cka_lib.cka_all_pairs(xs, control_dim=8, dtype=jnp.float64, mesh=meshes["data8"])
  out["cka_new_traces"] = cka_lib._cka_impl._cache_size() - n0

  # MLP stitches (float32 training): pairs over `pairs`, minibatch rows over `data`.
  cfg = mlp.StitchConfig(depth=1)
  tcfg = mlp.TrainConfig(steps=40, eval_every=10, batch_size=32, lr=1e-3, warmup_steps=5)
  plan = mlp.make_plan(dims, cfg)
  train = mlp.stack_data(tr, plan)
  val = mlp.stack_data(va, plan)
  ref = mlp.fit(plan, train, val, cfg, tcfg)
  n0 = mlp.train_chunk._cache_size()
  got = mlp.fit(plan, train, val, cfg, tcfg, mesh=meshes["data4_pairs2"])
  out["mlp_data4_pairs2"] = rel(got["groups"], ref["groups"])
  out["mlp_new_traces"] = mlp.train_chunk._cache_size() - n0  # 4 chunks, one program
  got = mlp.fit(plan, train, val, cfg, tcfg, mesh=meshes["pairs8"])
  out["mlp_pairs8"] = rel(got["groups"], ref["groups"])
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
