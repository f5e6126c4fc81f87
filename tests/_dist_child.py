"""One process of the two-process test (tests/test_distributed.py), or its one-process reference.

    _dist_child.py OUT_DIR STORE_ROOT COORDINATOR PROCESS_ID NUM_PROCESSES MESH_DATA MESH_PAIRS

Embeds toy rows into the store through the multi-process writer (each process its own
rows), reads every array back, builds row-sharded global arrays over the whole mesh
and computes CKA and the closed-form stitches; process 0 writes the gathered results
to OUT_DIR/results.npz. NUM_PROCESSES=1 runs the same code in one process.
"""

import hashlib
import pathlib
import sys

import numpy as np

from lead_jax import data, distributed, store

MODELS = {"m8": 8, "m16a": 16, "m16b": 16}
N_ROWS, N_TRAIN, BLOCK = 72, 48, 16  # 5 blocks: 3 for process 0, 2 (one short) for process 1


def toy_rows() -> data.Rows:
  texts = tuple(f"row {i}: {'lorem ipsum ' * (i % 5)}end" for i in range(N_ROWS))
  digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
  return data.Rows("toy", "train", "corpus", tuple(map(str, range(N_ROWS))), texts, digest)


def toy_embed(model: str):
  """A deterministic function of each text: a shared 6-d latent, mixed per model, plus noise."""
  dim, key = MODELS[model], list(model.encode())
  mix = np.random.default_rng(key).standard_normal((6, dim))

  def embed(texts):
    out = []
    for t in texts:
      seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
      z = np.random.default_rng(seed).standard_normal(6)
      noise = np.random.default_rng([seed, *key]).standard_normal(dim)
      out.append(z @ mix + 0.3 * noise)
    return np.asarray(out, np.float32)

  return embed


def main(out_dir, store_root, coordinator, pid, n_proc, mesh_data, mesh_pairs):
  multi = distributed.initialize(coordinator, n_proc, pid) if n_proc > 1 else False
  import jax

  from lead_jax.similarity import cka
  from lead_jax.stitch import closed_form

  assert multi == (n_proc > 1) and jax.process_count() == n_proc, (multi, jax.process_count())

  rows = toy_rows()
  for model, dim in MODELS.items():
    w = store.write_rows(
        toy_embed(model),
        dim,
        rows,
        store_root,
        model,
        block_rows=BLOCK,
        meta={"weights_digest": f"toy-{model}", "pooling": "mean", "normalize": False},
    )
    assert w.complete, model
  names, xs = store.read_models(store_root, "toy", "train", "corpus", list(MODELS))

  mesh = distributed.make_mesh(mesh_data, mesh_pairs)
  assert mesh.devices.size == jax.device_count()
  own_tr, own_va = distributed.mesh_rows(mesh, N_TRAIN), distributed.mesh_rows(
      mesh, N_ROWS - N_TRAIN
  )
  train = [
      distributed.global_rows(x[:N_TRAIN][own_tr], mesh, N_TRAIN) for x in xs
  ]  # this process's rows only
  val = [distributed.global_rows(x[N_TRAIN:][own_va], mesh, N_ROWS - N_TRAIN) for x in xs]
  assert n_proc == 1 or not train[0].is_fully_addressable

  cka.cka_all_pairs(train, control_dim=None)
  traces = cka._cka_impl._cache_size()
  c = distributed.gather(
      cka.cka_all_pairs(train, control_dim=None)
  )  # a second call must not retrace
  assert cka._cka_impl._cache_size() == traces, (traces, cka._cka_impl._cache_size())
  fit = distributed.gather(
      closed_form.fit_all_pairs(
          train, val, control_dim=None, procrustes=False, spectra=False, predictions=False
      )
  )
  if jax.process_index() == 0:
    res = {f"cka_{k}": v for k, v in c.items()}
    res.update({f"ridge_{k}": v for k, v in fit["ridge"].items()})
    res.update({f"chosen_{k}": v for k, v in fit["chosen"].items()})
    np.savez(pathlib.Path(out_dir) / "results.npz", **res)
  print(f"process {jax.process_index()}/{jax.process_count()} done", flush=True)


if __name__ == "__main__":
  a = sys.argv[1:]
  main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), int(a[6]))
