"""Is the gate honest? Its out-of-fold estimate beside what the same stitch does on val.

    .venv/bin/python scripts/migrate_gate_check.py --run=checkpoints/default \\
        --work=checkpoints/migrate/work

`--run` is a study run whose store holds the val corpus and queries of the calibration's
two models (the default job's, or `experiments/embed.py` of those two models). Each
method calibrate saved is scored exactly as `retrieval_eval` scores stitches
(the per-stitch step of `lead_jax.pipeline.retrieval.stitched_table`, over the whole val
split: the old model's val corpus through the stitch, searched with the new model's val
queries, retention = stitched / native nDCG@10; the table's train-mean row, which needs
the train arrays, is left out), and set beside calibrate's estimate and interval; so is
the serve direction (the new model's val queries through the inverse stitch, searched in
the old model's val corpus, over the new model's native nDCG@10). Prints one
JSON line per method, then a summary line (`contained`: every chosen-method figure in its
interval).
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from lead_jax import config  # noqa: E402
from lead_jax.layout import RunLayout  # noqa: E402
from lead_jax.pipeline import retrieval  # noqa: E402
from lead_jax.stitch import io as stitch_io  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--run", required=True)
  ap.add_argument("--work", required=True)
  args = ap.parse_args()
  work = pathlib.Path(args.work)
  calib = json.loads((work / "calibration.json").read_text())
  cfg = config.StudyConfig(out=args.run, models=(calib["source_model"], calib["target_model"]))
  ctx = retrieval.Context(cfg, RunLayout.from_config(cfg))
  src, tgt = calib["source_model"], calib["target_model"]
  out = []
  for m in calib["methods"]:
    st = stitch_io.find(stitch_io.load(work / "stitches" / m), src, tgt)
    # what retrieval_eval's stitched table does per stitch (pipeline.retrieval.stitched_table)
    met, _ = ctx.retrieve(st.apply(ctx.C[src]), ctx.Q[tgt])
    row = {**met, **ctx.versus_native(tgt, met)}
    est = calib["estimates"][m]["translate"]["ndcg@10_retention"]
    rec = {
        "method": m,
        "chosen": m == calib["method"],
        "val_retention_ndcg@10": float(row["retention_ndcg@10"]),
        "val_ndcg@10": float(row["ndcg@10"]),
        "val_native_ndcg@10": float(row["native_ndcg@10"]),
        "estimate": est["estimate"],
        "lo": est["lo"],
        "hi": est["hi"],
        "contained": est["lo"] <= float(row["retention_ndcg@10"]) <= est["hi"],
    }
    # serve: the new model's val queries mapped into the old space, the old val corpus
    back = stitch_io.find(stitch_io.load(work / "stitches" / m), tgt, src)
    smet, _ = ctx.retrieve(ctx.C[src], back.apply(ctx.Q[tgt]))
    sval = smet["ndcg@10"] / ctx.native[tgt]["ndcg@10"]
    sest = calib["estimates"][m]["serve"]["ndcg@10_retention"]
    rec["serve"] = {
        "val_retention_ndcg@10": sval,
        "estimate": sest["estimate"],
        "lo": sest["lo"],
        "hi": sest["hi"],
        "contained": sest["lo"] <= sval <= sest["hi"],
    }
    out.append(rec)
    print(json.dumps(rec))
  chosen = next(r for r in out if r["chosen"])
  print(
      json.dumps(
          {
              "k": calib["k"],
              "n_val_queries": ctx.counts["n_scored_queries"],
              "n_calibration_queries": calib["n_queries"],
              "calibration_native_ndcg@10": calib["references"]["native_ndcg@10"],
              "chosen": chosen["method"],
              "contained": chosen["contained"],
              "all_contained": all(r["contained"] for r in out),
          }
      )
  )


if __name__ == "__main__":
  main()
