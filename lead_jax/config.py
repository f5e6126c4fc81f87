"""The study config: every setting of every stage, each default defined exactly once, here.

    python experiments/run_all.py --config=configs/default.py --config.mlp.steps=500

One `StudyConfig` (a tree of plain dataclasses) describes a whole run: the data and
its split, the models, the store and run directory, and the settings of CKA, the
closed form, the MLPs, retrieval, translation and the mesh. The binaries load it with
`ml_collections.config_flags` from a `configs/*.py` file (whose `get_config()` returns a
`StudyConfig`) and apply per-field overrides `--config.<section>.<field>=value`, which
are type-checked against the field's annotation. The stages in `lead_jax.pipeline` take
the resolved config and write it to `<out>/config.json`.

Conventions, so that every field can be set from the command line:
  * integer counts use 0 for "none / off" (`data.max_docs=0`: no cap, `control.dim=0`:
    no Gaussian control, `mlp.width=0`: max(d_in, d_out));
  * optional strings use "" for "the default" (`store=""`: `<out>/store`);
  * tuples are written as Python literals: `--config.mlp.depths='(0,1,2)'`.

Fields are mutable only so that `config_flags` can apply overrides; the stages never
change a config, and engine structs built from it (`mlp.StitchConfig`, …) are frozen.
"""

import dataclasses
import json
from typing import Any

OFFLINE_MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "paraphrase-MiniLM-L3-v2", "wordllama")
STAGES = ("embed", "similarity", "closed_form", "mlp", "retrieval", "report")


def _field(cls):
  return dataclasses.field(default_factory=cls)


@dataclasses.dataclass
class DataConfig:
  """Which documents and queries become rows, and how documents are chunked."""

  qrels_split: str = ""  # qrels/<split>.tsv; "": test, else the first
  max_docs: int = 8_000  # cap on train + val documents, split n_train:n_val; 0: no cap
  n_train: int = 6_000  # train documents (stitch fitting)
  n_val: int = 2_000  # val documents; filled with query-relevant documents first
  seed: int = 0  # seed of the document cap and split
  chunk_tokens: int = 256  # chunk window, cl100k tokens
  chunk_overlap: int = 25  # overlap between consecutive chunks, tokens


@dataclasses.dataclass
class ControlConfig:
  """The seeded N(0, 1) "model": a source (and CKA column) no text explains."""

  dim: int = 768  # its width; 0: no Gaussian control anywhere
  seed: int = 0  # one stream per run; train rows first, then val rows


@dataclasses.dataclass
class EmbedConfig:
  """Embedding every model's rows into the store."""

  arrays: tuple[str, ...] = ("train/corpus", "val/corpus", "val/query")  # split/kind
  batch_size: int = 64  # sequences per forward pass (rounded up to a multiple of the devices)
  block_rows: int = 2_048  # rows per committed store block: the most a kill can lose
  bf16: bool = False  # bf16 compute (GPU/TPU); fp32 otherwise
  store_dtype: str = "float32"  # float32 | bfloat16 | float16 on disk
  allow_pickle: bool = False  # allow pytorch_model.bin (pickle) weights
  overwrite: bool = False  # re-embed arrays whose metadata differs instead of refusing
  openai_dimensions: int = 0  # `dimensions` of text-embedding-3 models; 0: the model's own
  openai_concurrency: int = 4  # concurrent OpenAI requests
  openai_batch_size: int = 512  # inputs per OpenAI request (API cap 2048)
  openai_max_retries: int = 8  # retries per request before failing
  openai_timeout_s: float = 60.0  # seconds before a request times out (then retried)


@dataclasses.dataclass
class CkaConfig:
  """Linear and debiased CKA between every pair of models."""

  split: str = "train"  # the split whose corpus rows are compared
  float64: bool = False  # compute in float64 (CPU)


@dataclasses.dataclass
class NullConfig:
  """Permutation nulls of linear CKA, debiased CKA and mutual-kNN (similarity stage)."""

  enabled: bool = True  # compute the nulls, calibrated scores and p-values
  permutations: int = 200  # P row permutations of one side, shared by every pair and statistic
  seed: int = 0  # seed of the permutations
  knn_k: int = 10  # k of mutual-kNN (cosine, self excluded)
  batch: int = 1  # permutations per loop step, vmapped inside it (1 measured fastest on CPU)


@dataclasses.dataclass
class MeasuresConfig:
  """More similarity measures, every pair (similarity stage): CKNNA, SVCCA, PWCCA, …"""

  enabled: bool = True  # compute CKNNA, SVCCA, PWCCA, Procrustes angle and RSA
  cknna_k: int = 10  # k of CKNNA's kNN masks (platonic-rep's default topk)
  svcca_k: int = 10  # top-k SVD directions kept per space before CCA (platonic-rep's cca_dim)
  rcond: float = 1e-6  # CCA whitening: Gram eigenvalues ≤ rcond·max are dropped
  rsa_rows: int = 1_000  # RSA: rows of the seeded subsample (its RDMs are rows×rows)
  rsa_seed: int = 0  # seed of the RSA subsample


@dataclasses.dataclass
class UnsupervisedConfig:
  """Alignment without paired texts (mini-vec2vec style), every ordered pair of models."""

  enabled: bool = True  # fit and evaluate the unsupervised maps
  pca_k: int = 64  # common width: every model is reduced to min(pca_k, narrowest) by PCA
  clusters: int = 32  # k-means centroids per space (the anchors that get matched)
  restarts: int = 8  # k-means runs per space, each matched and refined; the best is kept
  kmeans_iters: int = 25  # Lloyd iterations
  match_iters: int = 30  # graduated-assignment steps of the centroid matching
  fit_rows: int = 2_000  # unpaired rows per side the fit sees (from disjoint train halves)
  refine_iters: int = 10  # Procrustes-on-nearest-neighbour refinement steps
  select_iters: int = 2  # steps each start is refined before the better one is kept
  refine_smoothing: float = 0.5  # R ← polar((1 − α) R + α R_new), α this value
  neighbours: int = 1  # pseudo-pair targets averaged per source row
  ridge_lambda: float = 1.0  # λ of the supervised ridge ceiling (on the same reduced rows)
  seed: int = 0  # k-means inits, the disjoint source/target split, the random floor


@dataclasses.dataclass
class ClosedFormConfig:
  """Closed-form stitches: ridge over a λ-path, OLS, Procrustes, k-fold CV."""

  lambdas: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)
  folds: int = 5  # k of k-fold CV on the train split; 0: none
  fold_seed: int = 0  # seed of the fold assignment
  float64: bool = False  # compute in float64 (CPU)
  exact_ols: bool = True  # λ = 0 metrics from float64 least squares on the rows


@dataclasses.dataclass
class MlpConfig:
  """MLP stitches: architecture, objective and optimisation, one all-pairs run per depth."""

  depths: tuple[int, ...] = (0, 1, 2)  # nonlinearities; one run each (0 = affine, trained)
  kind: str = "corpus"  # rows to stitch: corpus or query
  width: int = 0  # hidden width; 0: max(d_in, d_out)
  activation: str = "gelu"  # gelu | relu
  residual: bool = False  # residual connections on hidden→hidden layers
  layer_norm: bool = False  # LayerNorm before each nonlinearity
  objective: str = "mse"  # mse | cosine | infonce
  temperature: float = 0.05  # InfoNCE temperature (initial value when learned)
  learn_temperature: bool = True
  steps: int = 1_000  # optimisation steps per pair
  batch_size: int = 256  # minibatch rows
  lr: float = 1e-3  # peak learning rate
  end_lr_ratio: float = 0.01  # final lr / peak lr (cosine decay)
  warmup_steps: int = 100  # linear warmup steps
  weight_decay: float = 1e-4  # AdamW decay, weight matrices only
  grad_clip: float = 0.0  # per-pair global-norm clip; 0: off
  eval_every: int = 100  # validate (and check early stopping) every k steps
  patience: int = 5  # evaluations without improvement before a pair stops; 0: never
  save_every: int = 500  # checkpoint every k steps (rounded to eval boundaries)
  seed: int = 0  # init and minibatch seed (per pair)


@dataclasses.dataclass
class RetrievalConfig:
  """Native, stitched and overlap retrieval on the val split."""

  split: str = "val"
  overlap_k: tuple[int, ...] = (10, 100)  # k of Jaccard@k / RankSim@k
  knn_k: int = 10  # k of mutual-kNN
  block: int = 4_096  # corpus rows per search block
  query_block: int = 1_024  # queries per search call
  # calibration-size curve: ridge on nested seeded train prefixes of these sizes (and all
  # train rows), λ per pair and size by val MSE; val R² and nDCG@10 retention. (): off
  curve_sizes: tuple[int, ...] = (250, 500, 1_000, 2_000, 4_000)
  curve_seed: int = 0  # seed of the order rows join the prefixes


@dataclasses.dataclass
class TranslateConfig:
  """Moving a store array into another model's space with a saved stitch."""

  split: str = "val"
  kind: str = "corpus"
  source: str = ""  # the model whose array is translated
  target: str = ""  # picks the stitch source→target
  stitch: str = ""  # stitch checkpoint directory; "": <out>/closed_form
  name: str = ""  # the new array's name; "": <source>__to__<target>
  out_store: str = ""  # store root written to; "": the run's store
  block_rows: int = 1_024  # rows per read / apply / commit block
  store_dtype: str = "float32"
  normalize: bool = False  # L2-normalise the translated rows
  overwrite: bool = False  # replace an array written with a different stitch


@dataclasses.dataclass
class MigrateConfig:
  """Moving a real vector store to a new model: plan, calibrate, gate, translate, serve.

  A collection is named `<backend>:<location>#<name>`: `lancedb:DIR#TABLE`,
  `chroma:DIR#COLLECTION`, or `zarr:ROOT#dataset/split/kind/model` (lead_jax's own store).
  """

  source: str = ""  # the collection to migrate (read only, never written)
  source_model: str = ""  # the model that embedded it; "": the collection's recorded model
  target_model: str = ""  # the new model (any lead_jax encoder, openai/… included)
  target: str = ""  # the NEW collection translate writes (same address forms)
  work: str = ""  # calibration directory (stitches, estimates, gate); "": <out>/migrate
  id_field: str = "id"  # LanceDB columns: ids, vectors, texts
  vector_field: str = "vector"
  text_field: str = "text"
  texts: str = ""  # JSONL of {"id", "text"} for collections without texts; "": the collection's
  queries: str = ""  # BEIR dir or 'wordnet' whose queries + qrels judge the collection's ids
  k: int = 2_000  # calibration texts embedded with the new model
  seed: int = 0  # sample, folds, bootstrap and MLP seed
  folds: int = 5  # cross-fitting folds: λ by CV, and out-of-fold translations for estimates
  methods: tuple[str, ...] = ("ridge", "ols", "procrustes", "mlp")  # fitted and estimated
  method: str = "auto"  # the one translate/serve use; auto: best estimated retention
  mlp_depth: int = 1  # MLP nonlinearities (the rest of the MLP settings: config.mlp)
  mlp_steps: int = 500  # MLP optimisation steps per fit
  bootstrap: int = 1_000  # bootstrap resamples of the confidence intervals
  ci: float = 0.95  # confidence level
  probe: int = 64  # texts embedded by plan to measure the new model's rate; 0: no probe
  pass_retention: float = 0.90  # gate PASS: the CI's lower bound is at least this
  fail_retention: float = 0.70  # gate FAIL: the estimate is below this (WARN in between)
  batch_rows: int = 1_024  # rows per translate batch (one atomic, idempotent write)
  normalize: bool = True  # L2-normalise translated vectors
  resume: bool = False  # continue a target collection a killed translate left
  # stop translate after this many batches (tests of resumption); 0: never
  stop_after_batches: int = 0


@dataclasses.dataclass
class MeshConfig:
  """The device mesh and the multi-process start-up (see docs/tpu.md)."""

  data: int = -1  # devices on the `data` (row) axis; -1: all devices / pairs
  pairs: int = 1  # devices on the `pairs` axis
  distributed: str = "auto"  # start jax.distributed: auto | on | off
  coordinator_address: str = ""  # HOST:PORT of process 0; "": $LEAD_JAX_COORDINATOR
  num_processes: int = 0  # 0: $LEAD_JAX_NUM_PROCESSES (or one process)
  process_id: int = -1  # -1: $LEAD_JAX_PROCESS_ID


@dataclasses.dataclass
class StudyConfig:
  """A whole run: data, models, where things go, and every stage's settings."""

  dataset: str = "wordnet"  # 'wordnet' (shipped) or a BEIR directory
  models: tuple[str, ...] = OFFLINE_MODELS  # registry names or model directories
  out: str = "checkpoints/default"  # the run directory (see lead_jax.pipeline.RunLayout)
  store: str = ""  # embedding store root (a path or a TensorStore URL); "": <out>/store
  stages: tuple[str, ...] = STAGES  # what run_all runs, in this order
  # JAX's persistent compilation cache: a rerun, and every stage after the first, reuses
  # compiled programs instead of compiling again; "": off
  compilation_cache: str = "~/.cache/lead_jax/jax_cache"
  data: DataConfig = _field(DataConfig)
  control: ControlConfig = _field(ControlConfig)
  embed: EmbedConfig = _field(EmbedConfig)
  cka: CkaConfig = _field(CkaConfig)
  null: NullConfig = _field(NullConfig)
  measures: MeasuresConfig = _field(MeasuresConfig)
  unsupervised: UnsupervisedConfig = _field(UnsupervisedConfig)
  closed_form: ClosedFormConfig = _field(ClosedFormConfig)
  mlp: MlpConfig = _field(MlpConfig)
  retrieval: RetrievalConfig = _field(RetrievalConfig)
  translate: TranslateConfig = _field(TranslateConfig)
  migrate: MigrateConfig = _field(MigrateConfig)
  mesh: MeshConfig = _field(MeshConfig)


def to_dict(cfg: Any) -> dict:
  """The config as plain JSON-able data (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(cls: type, d: dict) -> Any:
  """Builds `cls` (a config dataclass) from `to_dict` output, refusing unknown keys.

  Args:
    cls: the dataclass, e.g. `StudyConfig`.
    d: its fields; missing ones take their defaults.

  Returns:
    The config.

  Raises:
    ValueError: a key names no field (the message lists the valid ones).
  """
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(d) - set(fields))
  if unknown:
    raise ValueError(f"{cls.__name__}: unknown fields {unknown}; valid: {sorted(fields)}")
  kw = {}
  for name, v in d.items():
    default = fields[name].default_factory() if callable(fields[name].default_factory) else None
    if dataclasses.is_dataclass(default):
      kw[name] = from_dict(type(default), v)
    else:
      kw[name] = tuple(v) if isinstance(v, list) else v
  return cls(**kw)


def validate(cfg: StudyConfig) -> StudyConfig:
  """Checks values no type annotation can, naming the field; returns `cfg`.

  Raises:
    ValueError: a field is out of range.
  """
  checks = [
      (cfg.models and all(cfg.models), "models", "at least one model name"),
      (set(cfg.stages) <= set(STAGES), "stages", f"a subset of {STAGES}"),
      (cfg.data.n_train > 0 and cfg.data.n_val > 0, "data.n_train/n_val", "positive"),
      (cfg.data.max_docs >= 0, "data.max_docs", "≥ 0 (0: no cap)"),
      (cfg.control.dim >= 0, "control.dim", "≥ 0 (0: no control)"),
      (cfg.closed_form.folds == 0 or cfg.closed_form.folds >= 2, "closed_form.folds", "0 or ≥ 2"),
      (all(x >= 0 for x in cfg.closed_form.lambdas), "closed_form.lambdas", "non-negative"),
      (cfg.mesh.distributed in ("auto", "on", "off"), "mesh.distributed", "auto, on or off"),
      (cfg.migrate.folds >= 2, "migrate.folds", "≥ 2"),
      (0 < cfg.migrate.ci < 1, "migrate.ci", "in (0, 1)"),
      (cfg.migrate.batch_rows >= 1, "migrate.batch_rows", "≥ 1"),
      (
          cfg.migrate.fail_retention <= cfg.migrate.pass_retention,
          "migrate.fail_retention",
          "≤ migrate.pass_retention",
      ),
      (cfg.null.permutations >= 1 and cfg.null.batch >= 1, "null.permutations", "≥ 1"),
      (cfg.null.knn_k >= 1, "null.knn_k", "≥ 1"),
      (cfg.measures.cknna_k >= 2, "measures.cknna_k", "≥ 2"),
      (cfg.measures.svcca_k >= 1 and cfg.measures.rsa_rows >= 4, "measures.svcca_k", "≥ 1"),
      (cfg.unsupervised.clusters >= 2, "unsupervised.clusters", "≥ 2"),
      (
          0 < cfg.unsupervised.refine_smoothing <= 1,
          "unsupervised.refine_smoothing",
          "in (0, 1]",
      ),
  ]
  for split_kind in cfg.embed.arrays:
    split, _, kind = split_kind.partition("/")
    checks.append(
        (split in ("train", "val") and kind in ("corpus", "query"), "embed.arrays", "split/kind")
    )
  for ok, name, want in checks:
    if not ok:
      raise ValueError(f"config.{name} must be {want}; got {_get(cfg, name)!r}")
  return cfg


def _get(cfg: Any, dotted: str) -> Any:
  obj = cfg
  for part in dotted.split("/")[0].split("."):
    obj = getattr(obj, part, None)
  return obj
