"""A user's package (worked example of a records plugin): the DyT layer in MLX
(:mod:`user_layers.mlx_layers`), its PyTorch reference (:mod:`user_layers.torch_layers`) and
the conformance record that checks one against the other (:mod:`user_layers.records`)."""
