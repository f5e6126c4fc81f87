"""Child for tests/test_mlp.py: trains a tiny all-pairs run with checkpoints, optionally
SIGKILLing itself right after the checkpoint at ``kill_at`` has been written.

    python tests/_mlp_train_child.py OUT_DIR [KILL_AT_STEP]
"""

import os
import signal
import sys

import numpy as np

from lead_jax.stitch import mlp, mlp_checkpoint

DIMS, N, NV = (6, 6, 10), 256, 64
CFG = mlp.StitchConfig(depth=2, layer_norm=True, residual=True)
TCFG = mlp.TrainConfig(
    steps=60,
    batch_size=32,
    lr=3e-3,
    eval_every=10,
    warmup_steps=5,
    patience=3,
    grad_clip=1.0,
    seed=3,
)


def data():
  rng = np.random.default_rng(0)
  z = rng.standard_normal((N + NV, 4)).astype(np.float32)
  return [np.tanh(z @ rng.standard_normal((4, d)).astype(np.float32)) for d in DIMS]


def run(out, kill_at=None):
  xs = data()
  plan = mlp.make_plan(DIMS, CFG)
  train = mlp.stack_data([x[:N] for x in xs], plan)
  val = mlp.stack_data([x[N:] for x in xs], plan)

  def hook(state):
    if kill_at is not None and int(state["step"]) >= kill_at:
      os.kill(os.getpid(), signal.SIGKILL)

  return mlp_checkpoint.fit(
      out, plan, train, val, CFG, TCFG, ["a", "b", "c"], save_every=20, on_eval=hook
  )


if __name__ == "__main__":
  run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
