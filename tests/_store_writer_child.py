"""Child process for the kill test: writes a deterministic array through the store writer."""

import sys
import time

import numpy as np

from lead_jax import store

root, n_rows, dim, block, delay = (
    sys.argv[1],
    int(sys.argv[2]),
    int(sys.argv[3]),
    int(sys.argv[4]),
    float(sys.argv[5]),
)


def rows(start, stop):
  r = np.arange(start, stop, dtype=np.float64)[:, None]
  c = np.arange(dim, dtype=np.float64)[None, :]
  return np.sin(r * 0.37 + c * 1.3).astype(np.float32)


w = store.open_writer(
    root,
    "ds",
    "train",
    "corpus",
    "org/model",
    n_rows=n_rows,
    dim=dim,
    block_rows=block,
    meta={"weights_digest": "w0", "rows_digest": "r0", "pooling": "mean", "normalize": True},
)
for start in range(w.committed_rows, w.n_rows, w.block_rows):
  w.write(start, rows(start, min(start + w.block_rows, w.n_rows)))
  time.sleep(delay)
w.finish()
print("done", flush=True)
