"""Moves a vector store to a new model without re-embedding: plan, calibrate, gate, translate.

    py=.venv/bin/python; m=--config.migrate
    $py experiments/migrate.py build_demo $m.source=lancedb:/tmp/db#wordnet \\
        $m.source_model=all-MiniLM-L6-v2                  # a demo table from WordNet
    $py experiments/migrate.py plan $m.source=lancedb:/tmp/db#wordnet \\
        $m.target_model=all-mpnet-base-v2
    $py experiments/migrate.py calibrate $m.source=lancedb:/tmp/db#wordnet \\
        $m.target_model=all-mpnet-base-v2 $m.k=2000 $m.queries=wordnet $m.work=/tmp/mig
    $py experiments/migrate.py gate $m.work=/tmp/mig      # exit 0 PASS, 1 WARN, 2 FAIL
    $py experiments/migrate.py translate $m.source=lancedb:/tmp/db#wordnet \\
        $m.target=lancedb:/tmp/db#wordnet_mpnet $m.work=/tmp/mig [$m.resume=True]
    $py experiments/migrate.py query $m.target=lancedb:/tmp/db#wordnet_mpnet \
        --query="a young dog"                             # the engine's own search

One subcommand per step, each one library call (lead_jax/migrate/); the settings are
`config.migrate` (lead_jax/config.py). The result is printed as JSON on the last line.
Bad input prints `error: …` naming the collection and id, and exits 2.
"""

import sys

import _cli
from absl import flags

from lead_jax.migrate import stores

COMMANDS = ("build_demo", "plan", "calibrate", "gate", "translate", "query")
QUERY = flags.DEFINE_string("query", "", "query: the text to search for.")
K = flags.DEFINE_integer("k", 5, "query: how many hits.")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise stores.MigrateError(f"usage: migrate.py {{{','.join(COMMANDS)}}} --config.migrate.…")
  cfg = _cli.study_config()
  from lead_jax.pipeline import _common

  _common.use_compilation_cache(cfg.compilation_cache)
  cmd = argv[1]
  if cmd == "build_demo":
    from lead_jax.migrate import demo

    _cli.print_json(demo.build(cfg))
  elif cmd == "plan":
    from lead_jax.migrate import plan

    out = plan.run(cfg)
    _cli.print_json(out)
    if not out["ok"]:
      print(f"error: {out['collection']}: {'; '.join(out['problems'])}", file=sys.stderr)
      sys.exit(2)
  elif cmd == "calibrate":
    from lead_jax.migrate import calibrate

    rec = calibrate.run(cfg)
    _cli.print_json({k: rec[k] for k in ("method", "primary", "k", "lambda", "seconds")})
  elif cmd == "gate":
    from lead_jax.migrate import gate

    g = gate.run(cfg)
    print(
        f"{g['verdict']}: {g['metric']} {g['estimate']:.3f} [{g['lo']:.3f}, {g['hi']:.3f}] "
        f"({g['reason']}); {g['html']}"
    )
    _cli.print_json(g)
    sys.exit(g["exit_code"])
  elif cmd == "translate":
    from lead_jax.migrate import translate

    _cli.print_json(translate.run(cfg))
  else:
    if not QUERY.value:
      raise stores.MigrateError("query: give the text with --query=…")
    res = stores.search(cfg.migrate.target or cfg.migrate.source, cfg, QUERY.value, K.value)
    for h in res["hits"]:
      print(f"{h['distance']:.3f}  {h['id']}  {(h['text'] or '')[:100]}")
    _cli.print_json(res)


if __name__ == "__main__":
  _cli.run(main)
