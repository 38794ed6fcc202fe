"""A planted failure for the JUnit tests: the user's DyT with a bug on the MLX side (the
bias is dropped), so its conformance cell must fail and show in the JUnit XML."""

from __future__ import annotations

import dataclasses

from user_layers import records

from conformance.plugins import library_call

PLANTED = dataclasses.replace(
    records.DYT,
    name="user_layers.dyt_planted_bug",
    call=library_call(lambda a, p: records._mlx_dyt(a, p) - a["bias"], records._torch_dyt),
    dtypes=("float32",),
    mutants=(),
    bench=(),
)

RECORDS = (PLANTED,)
