"""The default study end to end: embed, CKA, closed-form and MLP stitches, retrieval, report.

    .venv/bin/python experiments/run_all.py                       # default WordNet subset, 4 offline models
    .venv/bin/python experiments/run_all.py --full                # the whole shipped WordNet set
    .venv/bin/python experiments/run_all.py --dataset=/data/beir/scifact --out=checkpoints/scifact

Each stage is one of the experiment binaries, run as its own process with the
flags below; run_all only composes them. A stage whose outputs are complete (its
`<out>/.stages/<stage>.json` marker, written after the stage exits 0, records the
same command) is skipped; a stage killed mid-way is rerun and resumes from what it
left (embedding resumes at its last committed block, MLP training at its last
Orbax checkpoint). Progress lines show the stage, rows/s or steps/s, and the ETA.

Several hosts (e.g. every worker of a TPU VM slice): run run_all on each, with the
same flags; the mesh and jax.distributed flags given (`--mesh_data`, `--mesh_pairs`,
`--distributed`, `--coordinator_address`, `--num_processes`, `--process_id`; see
lead_jax/distributed.py) are passed to every stage, whose processes then work as one
job. run_all itself starts no JAX runtime (each stage is its own jax.distributed job,
and would find the coordinator port and the TPU taken), and those flags are left out
of the stage markers, so that every worker agrees on which stages are complete.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

from absl import app, flags, logging

from lead_jax import distributed

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
OFFLINE_MODELS = ["all-MiniLM-L6-v2", "all-mpnet-base-v2", "paraphrase-MiniLM-L3-v2", "wordllama"]

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "wordnet", "'wordnet' (shipped) or a BEIR directory.")
flags.DEFINE_list("models", OFFLINE_MODELS, "Models to embed and compare.")
flags.DEFINE_string("out", "checkpoints/default", "Run directory (report in <out>/report).")
flags.DEFINE_string(
    "store", None, "Embedding store root (default: <out>/store, one store per run)."
)
flags.DEFINE_integer("max_docs", 8_000, "Documents embedded (train + val); the default subset.")
flags.DEFINE_integer("n_train", 6_000, "Train documents (of max_docs, by ratio).")
flags.DEFINE_integer(
    "n_val", 2_000, "Val documents; val is filled with query-relevant documents first."
)
flags.DEFINE_bool(
    "full", False, "Use the whole dataset at the study's caps (20,000 train / 5,000 val)."
)
flags.DEFINE_list("depths", ["0", "1", "2"], "MLP depths.")
flags.DEFINE_integer("mlp_steps", 1_000, "MLP steps per pair.")
flags.DEFINE_integer("folds", 5, "k-fold CV of the closed-form metrics.")
flags.DEFINE_list(
    "stages",
    ["embed", "similarity", "closed_form", "mlp", "retrieval", "report"],
    "Stages to run, in order.",
)
flags.DEFINE_bool("force", False, "Rerun stages even when complete.")


def stage_commands(
    *, dataset, models, out, store, max_docs, n_train, n_val, depths, mlp_steps, folds
):
  py = sys.executable
  models_s = ",".join(models)
  cap = [f"--n_train={n_train}", f"--n_val={n_val}"] + (
      [f"--max_docs={max_docs}"] if max_docs else []
  )
  common = [f"--dataset={dataset}", f"--store={store}", f"--out={out}"]
  name = pathlib.Path(dataset).name
  return {
      # train: corpus rows only (stitch fitting); val: corpus and queries (metrics, retrieval)
      "embed": [
          [
              py,
              str(EXP / "embed.py"),
              f"--dataset={dataset}",
              f"--models={models_s}",
              f"--out={store}",
              "--split=train",
              "--kind=corpus",
              *cap,
          ],
          [
              py,
              str(EXP / "embed.py"),
              f"--dataset={dataset}",
              f"--models={models_s}",
              f"--out={store}",
              "--split=val",
              "--kind=corpus,query",
              *cap,
          ],
      ],
      "similarity": [
          [
              py,
              str(EXP / "similarity.py"),
              f"--dataset={name}",
              f"--store={store}",
              f"--out={out}",
              f"--models={models_s}",
          ]
      ],
      "closed_form": [
          [
              py,
              str(EXP / "stitch_all_pairs.py"),
              f"--dataset={name}",
              f"--store={store}",
              f"--out={out}",
              f"--models={models_s}",
              f"--folds={folds}",
          ]
      ],
      "mlp": [
          [
              py,
              str(EXP / "train_mlp_stitches.py"),
              f"--dataset={name}",
              f"--store={store}",
              f"--out={out}",
              f"--models={models_s}",
              f"--depths={','.join(map(str, depths))}",
              f"--steps={mlp_steps}",
          ]
      ],
      "retrieval": [[py, str(EXP / "retrieval_eval.py"), *common, f"--models={models_s}"]],
      "report": [[py, str(EXP / "report.py"), f"--out={out}"]],
  }


def distributed_flags() -> list[str]:
  """The mesh / jax.distributed flags given to run_all, to pass on to every stage."""
  return [f"--{n}={FLAGS[n].value}" for n in distributed.FLAG_NAMES if FLAGS[n].present]


def run_stage(
    name: str, cmds: list[list[str]], out: pathlib.Path, force: bool, extra: list[str] | None = None
) -> float:
  """Runs a stage's commands (each with `extra` flags appended, which its marker leaves out)."""
  marker = out / ".stages" / f"{name}.json"
  want = {"commands": [c[1:] for c in cmds]}  # the interpreter path may differ between machines
  if (
      not force
      and marker.exists()
      and json.loads(marker.read_text()).get("commands") == want["commands"]
  ):
    logging.info("[%s] complete, skipping (delete %s to rerun)", name, marker)
    return 0.0
  t0 = time.time()
  for cmd in cmds:
    cmd = [*cmd, *(extra or [])]
    logging.info("[%s] %s", name, " ".join(cmd[1:]))
    rc = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc != 0:
      raise SystemExit(f"[{name}] failed with exit code {rc}: {' '.join(cmd[1:])}")
  marker.parent.mkdir(parents=True, exist_ok=True)
  tmp = marker.with_name(
      f"{marker.name}.{socket.gethostname()}.{os.getpid()}.tmp"
  )  # hosts may share <out>
  tmp.write_text(json.dumps({**want, "seconds": round(time.time() - t0, 1)}))
  os.replace(tmp, marker)
  logging.info("[%s] done in %.1fs", name, time.time() - t0)
  return time.time() - t0


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out)
  max_docs, n_train, n_val = (
      (None, 20_000, 5_000) if FLAGS.full else (FLAGS.max_docs, FLAGS.n_train, FLAGS.n_val)
  )
  cmds = stage_commands(
      dataset=FLAGS.dataset,
      models=FLAGS.models,
      out=FLAGS.out,
      store=FLAGS.store or str(out / "store"),
      max_docs=max_docs,
      n_train=n_train,
      n_val=n_val,
      depths=FLAGS.depths,
      mlp_steps=FLAGS.mlp_steps,
      folds=FLAGS.folds,
  )
  unknown = set(FLAGS.stages) - set(cmds)
  if unknown:
    raise SystemExit(f"unknown stages {sorted(unknown)}; known: {list(cmds)}")
  t0 = time.time()
  timings = {}
  for i, name in enumerate(s for s in cmds if s in FLAGS.stages):
    logging.info(
        "=== stage %d/%d: %s (%.0fs elapsed) ===", i + 1, len(FLAGS.stages), name, time.time() - t0
    )
    timings[name] = round(run_stage(name, cmds[name], out, FLAGS.force, distributed_flags()), 1)
  summary = out / "report" / "summary.txt"
  if summary.exists():
    print(summary.read_text())
  print(
      json.dumps(
          {
              "out": str(out),
              "report": str(out / "report" / "index.html"),
              "stage_seconds": timings,
              "total_seconds": round(time.time() - t0, 1),
          }
      )
  )


if __name__ == "__main__":
  app.run(main)
