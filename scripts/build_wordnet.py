"""Builds the WordNet gloss-retrieval set in BEIR layout from Debian's wordnet-base.

    apt-get install wordnet-base
    python scripts/build_wordnet.py                      # the shipped subset
    python scripts/build_wordnet.py --full --out=DIR     # every synset (~33k query/gloss pairs)

A query is a synset's first example sentence; the corpus is every chosen synset's
gloss (title: its lemmas, text: its definition); each query's one relevant
document is its own synset's gloss. The shipped subset keeps `--queries` seeded
synsets that have an example plus seeded distractor glosses up to `--docs`.
Output is byte-deterministic (sorted ids, gzip mtime 0).
"""

import argparse
import gzip
import json
import pathlib
import random
import re
import shutil

POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}
HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "lead_jax" / "data" / "wordnet"
LICENSE_SRC = pathlib.Path("/usr/share/doc/wordnet-base/copyright")


def parse_synsets(wordnet_dir: pathlib.Path):
  """Yields (doc_id, lemmas, definition, examples) for every synset."""
  for pos, tag in POS.items():
    path = wordnet_dir / f"data.{pos}"
    with open(path, encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if line.startswith("  "):  # licence header
          continue
        head, _, gloss = line.rstrip("\n").partition(" | ")
        fields = head.split()
        if not gloss or len(fields) < 4:
          raise ValueError(f"{path}:{lineno}: not a WordNet data line")
        offset, n_words = fields[0], int(fields[3], 16)
        lemmas = [
            re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]
        ]
        parts = [p.strip() for p in gloss.strip().split(";")]
        examples = [p.strip('"') for p in parts if p.startswith('"') and len(p) > 2]
        definition = "; ".join(p for p in parts if not p.startswith('"')).strip()
        yield f"{tag}{offset}", lemmas, definition, examples


def write_gz(path: pathlib.Path, lines):
  with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
    for line in lines:
      f.write((line + "\n").encode("utf-8"))


def main():
  ap = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  ap.add_argument("--wordnet_dir", default="/usr/share/wordnet")
  ap.add_argument("--out", default=str(DEFAULT_OUT))
  ap.add_argument(
      "--full", action="store_true", help="every synset, every example-bearing synset a query"
  )
  ap.add_argument("--queries", type=int, default=10_000)
  ap.add_argument("--docs", type=int, default=30_000)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()

  synsets = list(parse_synsets(pathlib.Path(args.wordnet_dir)))
  with_example = [s for s in synsets if s[3] and s[2]]
  rng = random.Random(args.seed)
  if args.full:
    query_syn = with_example
    docs = [s for s in synsets if s[2]]
  else:
    query_syn = rng.sample(with_example, args.queries)
    chosen = {s[0] for s in query_syn}
    rest = [s for s in synsets if s[0] not in chosen and s[2]]
    docs = query_syn + rng.sample(rest, args.docs - len(query_syn))
  docs = sorted(docs, key=lambda s: s[0])
  query_syn = sorted(query_syn, key=lambda s: s[0])

  out = pathlib.Path(args.out)
  (out / "qrels").mkdir(parents=True, exist_ok=True)
  write_gz(
      out / "corpus.jsonl.gz",
      (
          json.dumps({"_id": d, "title": ", ".join(l), "text": t}, ensure_ascii=False)
          for d, l, t, _ in docs
      ),
  )
  write_gz(
      out / "queries.jsonl.gz",
      (
          json.dumps({"_id": "q" + d, "text": ex[0]}, ensure_ascii=False)
          for d, _, _, ex in query_syn
      ),
  )
  with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for d, *_ in query_syn:
      f.write(f"q{d}\t{d}\t1\n")
  if LICENSE_SRC.exists():
    shutil.copyfile(LICENSE_SRC, out / "LICENSE")
  print(json.dumps({"out": str(out), "docs": len(docs), "queries": len(query_syn)}))


if __name__ == "__main__":
  main()
