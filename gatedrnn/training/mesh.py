"""Data-parallel training on a ``jax.sharding.Mesh``: the batch is split across devices,
the parameters are replicated, and XLA adds the gradient all-reduce (no ``pmap``).

The whole update stays one ``jax.jit`` program (see :func:`gatedrnn.training.train`'s
``mesh=``): the state enters and leaves replicated (:func:`replicated`), each batch is
constrained to be split along its leading axis (:func:`shard_batch`), and XLA's SPMD
partitioner turns the mean over the batch into per-device partial sums plus an
all-reduce. Random batches drawn inside the program are the same on any number of
devices (JAX's partitionable threefry), so a run on 8 devices follows the run on one
device up to float rounding of the reductions.

Several hosts: call ``jax.distributed.initialize()`` first in every process; then
``jax.devices()`` lists the devices of all hosts and :func:`data_mesh` spans them all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"data"`` over ``devices`` (default: all devices, of all hosts).

    Args:
      devices: the devices to use, e.g. ``jax.local_devices()[:4]``.

    Returns:
      a ``jax.sharding.Mesh`` with one axis ``"data"`` of size ``len(devices)``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device, got none")
    return Mesh(np.array(devices), (DATA_AXIS,))


def check_mesh(mesh: Any) -> Mesh:
    """Return ``mesh`` if it is a ``Mesh`` with a ``"data"`` axis, else raise."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must have an axis named {DATA_AXIS!r} (see data_mesh), got {mesh.axis_names}"
        )
    return mesh


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits axis 0 across the ``"data"`` axis of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Place every leaf of ``tree`` on all devices of ``mesh`` (params, optimizer state)."""
    return jax.device_put(tree, replicated(mesh))


def batch_size_advice(size: int, devices: int) -> str:
    """What to do about a batch of ``size`` rows that ``devices`` devices cannot split evenly.

    Returns:
      e.g. ``"use a batch size of 8 or 16, or a mesh of 6 devices (...)"`` for 12 rows on 8
      devices: the nearest multiples of ``devices`` below (if any) and above ``size``, and
      the largest device count below ``devices`` that divides ``size`` (if more than 1).
    """
    below, above = devices * (size // devices), devices * (size // devices + 1)
    sizes = f"{below} or {above}" if below > 0 else f"{above}"
    fewer = max((d for d in range(2, devices) if size % d == 0), default=None)
    mesh = f", or a mesh of {fewer} devices (data_mesh(jax.devices()[:{fewer}]))" if fewer else ""
    return f"use a batch size of {sizes}{mesh}"


def check_batch_divides(batch: PyTree, mesh: Mesh, what: str = "batch") -> None:
    """Raise ValueError, naming ``what``, unless every leaf of ``batch`` with an axis has a
    leading size that is a multiple of the devices of ``mesh``'s ``"data"`` axis.

    ``batch`` may hold arrays or ``jax.ShapeDtypeStruct`` (from ``jax.eval_shape``).
    """
    n = mesh.shape[DATA_AXIS]
    for leaf in jax.tree_util.tree_leaves(batch):
        shape = tuple(np.shape(leaf))
        if shape and shape[0] % n:
            raise ValueError(
                f"the {what} has {shape[0]} rows (a leaf of shape {shape}), not a multiple of "
                f"the {n} devices of the data mesh; {batch_size_advice(shape[0], n)}"
            )


def _leaf_sharding(leaf: Any, mesh: Mesh) -> NamedSharding:
    """Batch-split a leaf with a leading axis, replicate a scalar; check divisibility."""
    if not np.shape(leaf):
        return replicated(mesh)
    check_batch_divides(leaf, mesh)
    return batch_sharding(mesh)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Split every leaf of ``batch`` with at least one axis along axis 0 over ``mesh``.

    Works both on concrete arrays (``device_put``) and inside ``jit`` (a sharding
    constraint). Scalar leaves are replicated.

    Raises:
      ValueError: a leaf's leading axis is not a multiple of the number of devices.
    """
    shardings = jax.tree_util.tree_map(lambda leaf: _leaf_sharding(leaf, mesh), batch)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(batch)):
        return jax.lax.with_sharding_constraint(batch, shardings)
    return jax.device_put(batch, shardings)


def sharded_batch_fn(batch_fn: Callable[..., PyTree], mesh: Mesh) -> Callable[..., PyTree]:
    """``batch_fn`` whose batches come out split along axis 0 over ``mesh``."""

    def fn(*args: Any) -> PyTree:
        return shard_batch(batch_fn(*args), mesh)

    return fn


__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "batch_size_advice",
    "check_batch_divides",
    "check_mesh",
    "data_mesh",
    "replicate",
    "replicated",
    "shard_batch",
    "sharded_batch_fn",
]
