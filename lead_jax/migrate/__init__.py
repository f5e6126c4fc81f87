"""Moving a real vector store to a new model without re-embedding it.

    plan → calibrate → gate → translate   (or serve: new-model queries into the old space)

`stores` reads and writes LanceDB tables, Chroma collections and lead_jax's zarr arrays;
`plan` reports what a collection holds and what calibration costs; `calibrate` embeds K
sampled texts with the new model, fits every stitch with the engine and estimates
retention out of fold; `gate` turns the estimate into PASS / WARN / FAIL; `translate`
writes a NEW collection through the chosen stitch, resumably; `serve.Stitch` maps query
vectors. `experiments/migrate.py` is the binary.

Layer: above `pipeline` (it reuses the embed stage's encoders and row builder); nothing
in the package imports it.
"""
