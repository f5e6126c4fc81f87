"""Checks every array of an embedding store: complete, checksums, finite values, aligned rows.

    .venv/bin/python experiments/verify_store.py --store=checkpoints/default/store
    .venv/bin/python experiments/verify_store.py --store=gs://bucket/store --dataset=wordnet

Reads every chunk of every array (each carries a crc32c; see lead_jax/store). Prints one
line per bad array (`BAD <dataset>/<split>/<kind>/<model>: reason; …`) and per array with
warnings (`WARN …`: arrays written before checksums, "no checksum"), a summary, then one
JSON object as its last line: `{"arrays": n, "bad": [names], "problems": {name: [reasons]},
"warnings": {name: [warnings]}}`. Exits 0 when every array is good (warnings allowed), 2
when any is bad or the store holds no arrays. `--dataset` (as for every binary: `wordnet`
or a BEIR directory) checks only that dataset's arrays.
"""

import sys

import _cli
from absl import flags

from lead_jax import data, store

STORE = flags.DEFINE_string("store", None, "Store root: a directory or a kvstore URL.")
flags.mark_flag_as_required("store")


def main(argv):
  del argv
  dataset = data.dataset_name(_cli.DATASET.value) if _cli.DATASET.value else None
  reports = store.verify(STORE.value, dataset)  # a bad root: InputError, exit 2 (_cli.run)
  for r in reports:
    if r.problems:
      print(f"BAD {r.name}: {'; '.join(r.problems)}")
    if r.warnings:
      print(f"WARN {r.name}: {'; '.join(r.warnings)}")
  bad = [r.name for r in reports if not r.ok]
  warned = sum(bool(r.warnings) for r in reports)
  print(
      f"{len(reports)} arrays under {STORE.value}: {len(reports) - len(bad)} good, "
      f"{len(bad)} bad, {warned} with warnings"
  )
  _cli.print_json(
      {
          "arrays": len(reports),
          "bad": bad,
          "problems": {r.name: r.problems for r in reports if r.problems},
          "warnings": {r.name: r.warnings for r in reports if r.warnings},
      }
  )
  if bad:
    print(f"error: {len(bad)} bad arrays: {', '.join(bad)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _cli.run(main)
