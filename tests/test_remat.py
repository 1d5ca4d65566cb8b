"""``gr.scan(remat=...)``: checkpointing changes memory, never values or gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal, normal_like

import gatedrnn as gr
from gatedrnn.scan import remat_chunk

B, T, I, H = 2, 11, 3, 4


def _value_and_grads(cell, params, xs, remats, **options):
    """Value and gradients for each ``remat`` in ``remats``: one compile for all."""

    def loss(params, xs, remat):
        final, ys = gr.scan(cell, params, xs, remat=remat, fused=False, **options)
        return jnp.sum(jnp.cos(ys)) + sum(jnp.sum(s**2) for s in jax.tree_util.tree_leaves(final))

    value_and_grad = jax.value_and_grad(loss, argnums=(0, 1))
    return jax.jit(lambda params, xs: [value_and_grad(params, xs, r) for r in remats])(params, xs)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"seq_lengths": np.array([11, 4]), "reverse": True},
        {"seq_lengths": np.array([11, 4])},
        {"resets": np.eye(B, T, 3, dtype=bool), "truncate": 5, "time_major": True},
    ],
    ids=["plain", "lengths_reverse", "lengths", "resets_truncate_time_major"],
)
@pytest.mark.parametrize("make_cell", [gr.lstm, gr.gru], ids=["lstm", "gru"])
@pytest.mark.usefixtures("fast_compile")  # values, not memory: XLA's optimizations off
def test_remat_equals_no_remat_float64(make_cell, options):
    """Per-step, sqrt, dividing (11 = 2*4 + 3 leaves a tail) and oversized chunks."""
    with jax.enable_x64(True):
        cell = make_cell(H)
        # NumPy draws (scale 0.5) of the params' shapes: an eager init compiles each of
        # its operations, and any weights serve to compare the remat variants
        shapes = jax.eval_shape(lambda k: cell.init(k, I, dtype=jnp.float64), jax.random.key(0))
        params = normal_like(shapes, seed=2)
        xs = normal(1, (T, B, I) if options.get("time_major") else (B, T, I), np.float64)
        opts = dict(options)
        if opts.get("time_major"):
            opts["resets"] = opts["resets"].T
        remats = (True, "sqrt", 4, 20)
        want, *gots = _value_and_grads(cell, params, xs, (False, *remats), **opts)
        for remat, got in zip(remats, gots):
            chex.assert_trees_all_close(
                got, want, rtol=1e-10, atol=1e-12, custom_message=f"remat={remat!r}"
            )


def test_remat_chunk_sizes_and_errors():
    assert remat_chunk(False, 100) is None and remat_chunk(True, 100) is None
    assert remat_chunk("sqrt", 8192) == 91 and remat_chunk("sqrt", 1) == 1
    assert remat_chunk(7, 100) == 7
    for bad in ("log", 0, -3, 2.5):
        with pytest.raises(ValueError, match="remat must be"):
            remat_chunk(bad, 10)


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
def test_sqrt_remat_uses_much_less_memory_than_storing_every_step(time_major):
    """XLA's compiled memory analysis at T=1024: chunked remat needs a fraction of the
    temporary memory of plain BPTT in either layout (batch-major chunks read ``xs`` in
    place; the benchmark measures the T=8192 case)."""
    cell = gr.lstm(32)
    # shapes are all that XLA's memory analysis needs: nothing is computed but the programs
    params = jax.eval_shape(lambda key: cell.init(key, 8), jax.ShapeDtypeStruct((2,), jnp.uint32))
    xs = jax.ShapeDtypeStruct((1024, 4, 8) if time_major else (4, 1024, 8), jnp.float32)

    def temp_bytes(remat):
        def loss(params, xs):
            return jnp.sum(gr.scan(cell, params, xs, remat=remat, time_major=time_major)[1])

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return grad.lower(params, xs).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes("sqrt") * 8 < temp_bytes(False)
