"""Model-level conformance: whole models (``mlx_impl.models``) and the Flux 2 DiT block
(``mlx_impl.models.dit``) against their twins, a float64 oracle and the originals
(transformers, mlx-lm, diffusers). ``python -m conformance model CHECKPOINT_DIR`` runs it."""
