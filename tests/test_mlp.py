"""MLP stitches: planted maps, vmapped = alone, early stopping, SIGKILL resume."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lead_jax.stitch import mlp, mlp_checkpoint

CHILD = pathlib.Path(__file__).with_name("_mlp_train_child.py")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fit(xs, n, cfg, tcfg, pairs=None):
  plan = mlp.make_plan([x.shape[1] for x in xs], cfg, pairs)
  tr = mlp.stack_data([x[:n] for x in xs], plan)
  va = mlp.stack_data([x[n:] for x in xs], plan)
  return mlp.fit(plan, tr, va, cfg, tcfg), plan, va


def _planted(kind):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((320, 8)).astype(np.float32)
  w = rng.standard_normal((8, 6)).astype(np.float32) / 3
  b = rng.standard_normal(6).astype(np.float32)
  y = x @ w + b if kind == "linear" else np.tanh(2 * x @ w)
  return [x, y]


TCFG = mlp.TrainConfig(
    steps=1500,
    batch_size=128,
    lr=1e-2,
    end_lr_ratio=1e-3,
    weight_decay=0.0,
    eval_every=500,
    warmup_steps=50,
)


def _val_mse(kind, depth):
  cfg = mlp.StitchConfig(depth=depth)
  st, plan, va = _fit(_planted(kind), 256, cfg, TCFG, pairs=[(0, 1)])
  mse = mlp.evaluate(st, plan, va, cfg)[0]["mse"]
  # The shared metric agrees with a float64 NumPy reference on the same predictions.
  yhat, y = mlp.predict_val(tuple(g["best_params"] for g in st["groups"]), va, plan=plan, cfg=cfg)[
      0
  ]
  ref = np.mean((np.asarray(yhat[0], np.float64) - np.asarray(y[0], np.float64)) ** 2)
  np.testing.assert_allclose(mse, ref, rtol=1e-4, atol=1e-12)
  return mse


def test_depth0_recovers_planted_linear_map():
  assert _val_mse("linear", 0) <= 1e-6


def test_depth2_beats_depth0_on_planted_nonlinear_map():
  d0, d2 = _val_mse("tanh", 0), _val_mse("tanh", 2)
  assert d2 < 0.5 * d0, (d0, d2)


def _three_models():
  rng = np.random.default_rng(1)
  z = rng.standard_normal((200, 4)).astype(np.float32)
  return [np.tanh(z @ rng.standard_normal((4, d)).astype(np.float32)) for d in (6, 6, 10)]


@pytest.mark.slow  # three configs × every pair trained alone
@pytest.mark.parametrize(
    "cfg",
    [
        mlp.StitchConfig(depth=2, activation="relu"),
        mlp.StitchConfig(depth=2, layer_norm=True, residual=True, objective="cosine"),
        mlp.StitchConfig(depth=1, objective="infonce"),
    ],
    ids=["mse_relu", "cos_ln_res", "infonce"],
)
def test_vmapped_equals_each_pair_alone(cfg):
  xs = _three_models()
  tcfg = mlp.TrainConfig(
      steps=40,
      batch_size=16,
      lr=1e-2,
      eval_every=10,
      warmup_steps=4,
      patience=2,
      grad_clip=1.0,
      seed=7,
  )
  st, plan, _ = _fit(xs, 160, cfg, tcfg)
  assert len(plan.groups) == 3 and len(plan.pairs) == 6
  together = mlp.per_pair(st, plan, "params")
  init = mlp.per_pair(mlp.init_state(plan, cfg, tcfg), plan, "params")
  for k, pair in enumerate(plan.pairs):
    alone, aplan, _ = _fit(xs, 160, cfg, tcfg, pairs=[pair])
    a = mlp.per_pair(alone, aplan, "params")[0]
    assert mlp_checkpoint.state_max_abs_diff(init[k], together[k]) > 1e-3  # it trained
    assert mlp_checkpoint.state_max_abs_diff(a, together[k]) <= 1e-5, pair


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_optimizer_matches_optax_adamw(grad_clip):
  """`pair_update`'s AdamW (moments masked and stored before the update) against
  `optax.adamw` plus a `where(active)` on everything: bit-identical, an inactive pair
  included, over steps inside one jitted loop (where XLA's in-place updates apply)."""
  import optax

  cfg = mlp.StitchConfig(depth=2)
  tcfg = mlp.TrainConfig(
      steps=40, batch_size=16, lr=3e-2, warmup_steps=5, weight_decay=0.1, grad_clip=grad_clip
  )
  sched = optax.warmup_cosine_decay_schedule(
      0.0, tcfg.lr, tcfg.warmup_steps, tcfg.steps, tcfg.lr * tcfg.end_lr_ratio
  )
  decay = lambda p: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "w", p
  )
  ref_tx = optax.adamw(sched, weight_decay=tcfg.weight_decay, mask=decay)
  if grad_clip:
    ref_tx = optax.chain(optax.clip_by_global_norm(grad_clip), ref_tx)

  def ref_update(params, opt, active, x, y):
    loss, grads = jax.value_and_grad(mlp.pair_loss)(params, x, y, cfg)
    upd, new_opt = ref_tx.update(grads, opt, params)
    keep = lambda n, o: jnp.where(active, n, o)
    new = optax.apply_updates(params, upd)
    return jax.tree.map(keep, new, params), jax.tree.map(keep, new_opt, opt), loss

  ours_update = lambda *a: mlp.pair_update(*a, cfg=cfg, tcfg=tcfg)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 16, 12)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((3, 16, 20)), jnp.float32)
  active = jnp.asarray([True, False, True])
  params = jax.vmap(lambda k: mlp.init_pair(k, 12, 20, cfg))(jax.random.split(jax.random.key(0), 3))

  def run(update):
    opt = jax.vmap(mlp.make_optimizer(tcfg).init)(params)
    body = lambda i, c: jax.vmap(update)(c[0], c[1], active, x, y)[:2]
    return jax.jit(lambda p, o: jax.lax.fori_loop(0, 25, body, (p, o)))(params, opt)

  ours, ref = run(ours_update), run(ref_update)
  assert jax.tree.structure(ours) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  p0 = jax.tree.leaves(params)
  p1 = jax.tree.leaves(ours[0])
  assert all(np.array_equal(a[1], b[1]) for a, b in zip(p0, p1))  # the inactive pair
  assert any(not np.array_equal(a[0], b[0]) for a, b in zip(p0, p1))  # an active one trained


def test_early_stopping_masks_updates_inside_the_jit():
  xs = _three_models()
  cfg = mlp.StitchConfig(depth=1)
  # lr so high that val loss stops improving quickly; patience 1.
  tcfg = mlp.TrainConfig(steps=60, batch_size=16, lr=0.5, eval_every=5, warmup_steps=0, patience=1)
  plan = mlp.make_plan([x.shape[1] for x in xs], cfg)
  tr = mlp.stack_data([x[:160] for x in xs], plan)
  va = mlp.stack_data([x[160:] for x in xs], plan)
  snaps = []
  mlp.fit(plan, tr, va, cfg, tcfg, on_eval=lambda s: snaps.append(jax.tree.map(np.asarray, s)))
  stopped = mlp.per_pair(snaps[-1], plan, ("best", "stopped_at"))
  assert any(int(s) > 0 for s in stopped)
  for k, s in enumerate(stopped):
    if int(s) <= 0:
      continue
    e = int(s) // tcfg.eval_every - 1  # snapshot at the stopping step
    a = mlp.per_pair(snaps[e], plan, "params")[k]
    b = mlp.per_pair(snaps[-1], plan, "params")[k]
    assert mlp_checkpoint.state_max_abs_diff(a, b) == 0.0
    # best_params are from the best step, and the history has a val loss per evaluation
    assert int(mlp.per_pair(snaps[-1], plan, ("best", "step"))[k]) < int(s)
  assert np.isfinite(mlp.per_pair(snaps[-1], plan, ("history", "val"))[0]).all()
  # once both pairs of a group have stopped, `fit` leaves the group out of the program
  # (`skip`): no train loss after the later stop, while the val history goes on
  skipped = 0
  for g, gs in zip(plan.groups, snaps[-1]["groups"]):
    last = int(np.max(gs["best"]["stopped_at"]))
    if np.all(gs["best"]["stopped_at"] > 0) and last < tcfg.steps:
      skipped += 1
      assert np.isnan(gs["history"]["train"][:, last // tcfg.eval_every :]).all()
      assert np.isfinite(gs["history"]["val"]).all()
  assert skipped >= 1


def _child(out, kill_at=None):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, str(CHILD), str(out)] + ([str(kill_at)] if kill_at is not None else [])
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a child process killed mid-run, then resumed
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  sys.path.insert(0, str(CHILD.parent))
  import _mlp_train_child as child

  full = child.run(tmp_path / "full")  # uninterrupted, in-process
  killed = _child(tmp_path / "killed", kill_at=30)
  assert killed.returncode == -9, killed.stderr[-2000:]
  mngr = mlp_checkpoint.manager(tmp_path / "killed")
  assert mngr.latest_step() == 20  # saved at 20, killed after 30
  partial = mlp_checkpoint.restore(
      mngr, mlp.make_plan(child.DIMS, child.CFG), child.CFG, child.TCFG
  )
  mngr.close()
  # The compared states differ before resuming, so the check below can fail.
  assert mlp_checkpoint.state_max_abs_diff(partial["groups"], full["groups"]) > 1e-3
  resumed = _child(tmp_path / "killed")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  final, meta = mlp_checkpoint.restore_any(tmp_path / "killed")
  assert int(final["step"]) == child.TCFG.steps and meta["method"] == "mlp_d2_mse"
  assert mlp_checkpoint.state_max_abs_diff(final, full) <= 1e-6
  assert (tmp_path / "killed" / "curves.parquet").exists()


def test_checkpoint_round_trip(tmp_path):
  xs = _three_models()
  cfg = mlp.StitchConfig(depth=1, objective="infonce")
  tcfg = mlp.TrainConfig(steps=20, batch_size=16, eval_every=10, warmup_steps=2)
  plan = mlp.make_plan([x.shape[1] for x in xs], cfg)
  tr = mlp.stack_data([x[:160] for x in xs], plan)
  va = mlp.stack_data([x[160:] for x in xs], plan)
  st = mlp_checkpoint.fit(tmp_path, plan, tr, va, cfg, tcfg, ["a", "b", "c"])
  init = mlp.init_state(plan, cfg, tcfg)
  assert mlp_checkpoint.state_max_abs_diff(init, st) > 1e-4
  back, meta = mlp_checkpoint.restore_any(tmp_path)
  assert jax.tree.structure(back) == jax.tree.structure(st)
  assert mlp_checkpoint.state_max_abs_diff(back, st) == 0.0
  assert meta["names"] == ["a", "b", "c"] and meta["pairs"][0] == [0, 1]
  tab = mlp.results_to_table(st, plan, va, cfg, meta["names"], dataset="toy")
  from lead_jax.stitch import metrics

  assert list(tab.columns) == ["dataset", *metrics.TABLE_COLUMNS]
  assert set(tab["method"]) == {"mlp_d1_infonce"} and len(tab) == 6 * 9


def test_saved_mlp_stitches_load_apply_and_export(tmp_path):
  """A trained run read back as saved stitches (retrieval, translate) and exported."""
  from lead_jax.pipeline import inspect
  from lead_jax.stitch import io as stitch_io

  xs = _three_models()
  cfg = mlp.StitchConfig(depth=1)
  tcfg = mlp.TrainConfig(steps=20, batch_size=16, eval_every=10, warmup_steps=2)
  plan = mlp.make_plan([x.shape[1] for x in xs], cfg)
  tr = mlp.stack_data([x[:160] for x in xs], plan)
  va = mlp.stack_data([x[160:] for x in xs], plan)
  st = mlp_checkpoint.fit(tmp_path / "run", plan, tr, va, cfg, tcfg, ["a", "b", "c"])
  best = mlp.per_pair(st, plan, "best_params")
  saved = stitch_io.load(tmp_path / "run")
  assert [(s.source, s.target) for s in saved] == [
      ("a", "b"),
      ("a", "c"),
      ("b", "a"),
      ("b", "c"),
      ("c", "a"),
      ("c", "b"),
  ]
  k = plan.pairs.index((2, 0))
  s = stitch_io.find(saved, "c", "a")
  x = np.asarray(xs[2][160:], np.float32)
  want = np.asarray(mlp.apply_pair(jax.tree.map(jnp.asarray, best[k]), jnp.asarray(x), cfg))
  np.testing.assert_allclose(s.apply(x), want, rtol=1e-6, atol=1e-6)
  assert s.method == "mlp_d1_mse" and (s.source_dim, s.target_dim) == (x.shape[1], xs[0].shape[1])
  arrays = inspect.export("mlp", tmp_path / "run", str(tmp_path / "ca.npz"), "c", "a")
  with np.load(tmp_path / "ca.npz") as z:
    assert sorted(z.files) == sorted(arrays) and len(arrays) == 4  # two dense layers: w, b each
    for name, leaf in inspect.flatten(best[k]).items():
      np.testing.assert_array_equal(z[name], leaf)


def test_init_draws_share_programs_and_match_init_pair():
  """The initial weights come from a few power-of-two threefry programs (a prefix of a
  flat draw is the shape's draw, bit for bit) and equal `init_pair` per pair."""
  key = jax.random.PRNGKey(5)
  for shape in [(3, 5), (16, 16), (300, 384), (1, 1)]:
    np.testing.assert_array_equal(
        mlp._draw_normal(key, shape), np.asarray(jax.random.normal(key, shape, jnp.float32))
    )
  dims = [12, 20, 12, 7]
  cfg = mlp.StitchConfig(depth=2, layer_norm=True)
  tcfg = mlp.TrainConfig(steps=10, eval_every=10, warmup_steps=1, seed=4)
  plan = mlp.make_plan(dims, cfg)
  n0 = mlp._normal_flat._cache_size()
  got = mlp.per_pair(mlp.init_state(plan, cfg, tcfg), plan, "params")
  sizes = {
      1 << (a * b - 1).bit_length()
      for g in plan.groups
      for a, b in zip(
          mlp._layer_sizes(g.d_in, g.d_out, cfg)[:-1], mlp._layer_sizes(g.d_in, g.d_out, cfg)[1:]
      )
  }
  assert mlp._normal_flat._cache_size() - n0 <= len(sizes) < 3 * len(plan.groups)
  ref = jax.jit(mlp.init_pair, static_argnums=(1, 2, 3))
  for k, (s, t) in enumerate(plan.pairs):
    want = ref(jax.random.fold_in(mlp.pair_key(tcfg.seed, s, t), 0), dims[s], dims[t], cfg)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got[k])):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  in_program = mlp._init_state(None, plan=plan, cfg=cfg, tcfg=tcfg)  # the accelerators' route
  for a, b in zip(jax.tree.leaves(in_program), jax.tree.leaves(mlp.init_state(plan, cfg, tcfg))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  shapes = jax.tree.map(lambda a: (a.shape, a.dtype), mlp.abstract_state(plan, cfg, tcfg))
  assert shapes == jax.tree.map(lambda a: (a.shape, a.dtype), mlp.init_state(plan, cfg, tcfg))
