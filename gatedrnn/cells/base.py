"""The `Cell` type every recurrent cell is, and the checks and initializers the cells share.

A cell is a small, hashable NamedTuple of pure functions (like optax's
``GradientTransformation``): no classes with hidden state, no globals, no dicts, so a cell
can be a static argument of ``jax.jit``. Every cell's step is split in two so that the
time loop can go fast:

* ``project(params, x)``: the part of the step that depends on the input only
  (``x @ w_x``, plus the input bias where the cell has one), done for all time steps at
  once by :func:`gatedrnn.scan`; an array or a pytree of arrays (the GRU gives one array
  per gate block);
* ``recur(params, state, xp)``: the recurrent part, given the projected input.

Cells whose recurrent part is one matrix product of the state followed by elementwise
math give ``recur`` as a :class:`Split` (the one typed field for the fast path), so that
:func:`gatedrnn.scan` can run the cuDNN-style loop (``gatedrnn._fused``):

* ``hidden(params, state) -> a``: the recurrent matrix product (``h @ w_h`` plus a bias:
  vanilla and LSTM add their only bias here, inside the loop), row by row over the batch;
* ``pointwise(state, xp, a) -> (state, y)``: everything else, elementwise, no params.

A :class:`Split` is itself the recurrent function:
``Split(hidden, pointwise)(params, state, xp) == pointwise(state, xp, hidden(params, state))``.
``cell._replace(recur=f)`` with a plain function ``f`` turns the fast path off.

``step(params, state, x) == recur(params, state, project(params, x))`` by construction.
"""

from __future__ import annotations

import functools
import inspect
import os
import reprlib
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Array = jax.Array
Initializer = Callable[[Array, tuple[int, ...], Any], Array]


class Split(NamedTuple):
    """The recurrent part of a step as a matrix product then elementwise math.

    Attributes:
      hidden: ``hidden(params, state) -> a (*batch, gates * hidden_size)``, the recurrent
        matrix product, applied row by row over the batch axes.
      pointwise: ``pointwise(state, xp, a) -> (state, y)``, elementwise, no params.
      additive: True if ``pointwise`` uses ``xp`` and ``a`` only through their sum
        ``xp + a`` (vanilla, LSTM): the fused loop then adds the projection to ``a`` once
        per step and its backward pass emits one gradient for both.

    Calling it is the recurrent part itself: ``split(params, state, xp)``.
    """

    hidden: Callable[[PyTree, PyTree], Array]
    pointwise: Callable[[PyTree, PyTree, Array], tuple[PyTree, Array]]
    additive: bool = False

    def __call__(self, params: PyTree, state: PyTree, xp: PyTree) -> tuple[PyTree, Array]:
        """``pointwise(state, xp, hidden(params, state)) -> (state', y)``."""
        return self.pointwise(state, xp, self.hidden(params, state))


class Cell(NamedTuple):
    """A recurrent cell as a small, hashable NamedTuple of pure functions.

    Attributes:
      init: ``init(key, input_size, dtype=jnp.float32) -> params``.
      initial_state: ``initial_state(params, batch_shape=()) -> state`` (zeros), each leaf
        ``(*batch_shape, hidden_size)``.
      project: ``project(params, x) -> xp``: the input-only part of a step for any leading
        shape, ``(..., input_size) -> (..., gates * hidden_size)``, or a pytree of such
        arrays (the GRU's :class:`~gatedrnn.cells.gru.GRUInput`, ``(..., hidden_size)``
        each).
      recur: ``recur(params, state, xp) -> (state, y)``: the recurrent part of a step; a
        plain function, or a :class:`Split` (matrix product + elementwise) that
        :func:`gatedrnn.scan` runs on its fast path.
      output: ``output(params, state, xp) -> y (*batch, H)``: what a step emits from the
        state it reached (and the step's projected input, for cells with a skip
        connection such as the LRU's ``D x``); :func:`gatedrnn.scan` calls it when it
        changes a state after ``recur`` (``state_perturbations``).
      hidden_size: number of hidden units ``H``: the size of every output ``y``. State
        leaves are ``(*batch, n)`` with ``n`` the cell's own (``H`` for the classical
        cells; matrix or complex states are stored flattened / as real and imaginary
        parts, so every leaf has one feature axis).
      name: ``"vanilla"``, ``"lstm"``, ``"gru"``, ...
      config: the factory's keyword arguments as sorted ``(name, value)`` pairs (hashable);
        :attr:`options` gives them as a dict.
      parallel: optional ``parallel(params, xp, state0, valid) -> (final_state, ys)``: the
        whole time axis at once (``xp`` time-major ``(T, *batch, ...)``, ``ys (T, *batch,
        H)``), for cells whose recurrence allows it (linear in the state: minGRU, LRU,
        RG-LRU, mLSTM). ``valid`` is None or ``(T, *batch)`` bools: at a step where it is
        False the state must stay unchanged (the final state is the state after the last
        valid step); those steps' outputs are zeroed by :func:`gatedrnn.scan`. None: no
        parallel form.
      gates: optional ``gates(params, state, xp) -> dict[str, Array]``: the activations of
        one step's gates by name (``"forget"``, ``"update"``, ...), each ``(*batch, n)``,
        given the state before the step; values in ``[0, 1]`` except the entries named in
        ``tanh_gates`` (in ``[-1, 1]``). :func:`gatedrnn.diagnostics.gate_statistics`
        reads it. None: the cell reports no gates.
      tanh_gates: names of ``gates`` entries whose range is ``[-1, 1]`` (tanh candidates, a
        tanh RNN's state): a unit of such an entry is saturated when ``|g| > 1 - eps``,
        any other when ``g < eps`` or ``g > 1 - eps``.

    Derived: :meth:`step` (``recur(params, state, project(params, x))``), :attr:`options`,
    :attr:`hidden` and :attr:`pointwise` (the split's halves, or None).

    A custom cell (docs/adding_a_cell.md walks through one)::

        Cell(init, initial_state, project, Split(hidden, pointwise) or recur, output,
             hidden_size=H, name="mine", config=make_config(hidden_size=H),
             parallel=None, gates=None)
    """

    init: Callable[..., PyTree]
    initial_state: Callable[..., PyTree]
    project: Callable[[PyTree, Array], PyTree]
    recur: Callable[[PyTree, PyTree, PyTree], tuple[PyTree, Array]]
    output: Callable[[PyTree, PyTree, PyTree], Array]
    hidden_size: int
    name: str
    config: tuple[tuple[str, Any], ...] = ()
    parallel: Callable[..., tuple[PyTree, Array]] | None = None
    gates: Callable[[PyTree, PyTree, PyTree], dict[str, Array]] | None = None
    tanh_gates: tuple[str, ...] = ()

    @property
    def options(self) -> dict[str, Any]:
        """The factory's keyword arguments, for display, checkpoints and converters."""
        return dict(self.config)

    @property
    def split(self) -> Split | None:
        """``recur`` if it is a :class:`Split` (the fast path), else None."""
        return self.recur if isinstance(self.recur, Split) else None

    @property
    def hidden(self) -> Callable[[PyTree, PyTree], Array] | None:
        """The split's recurrent matrix product, or None (see :class:`Split`)."""
        return self.recur.hidden if isinstance(self.recur, Split) else None

    @property
    def pointwise(self) -> Callable[[PyTree, PyTree, Array], tuple[PyTree, Array]] | None:
        """The split's elementwise part, or None (see :class:`Split`)."""
        return self.recur.pointwise if isinstance(self.recur, Split) else None

    def step(self, params: PyTree, state: PyTree, x: Array) -> tuple[PyTree, Array]:
        """One step: ``x (*batch, input_size) -> (state', y (*batch, hidden_size))``.

        ``recur(params, state, project(params, x))``; the state is checked (structure,
        ``H``, batch, dtype) against :attr:`initial_state` first (shapes only: free under
        ``jit``).
        """
        xp = self.project(params, x)
        batch = tuple(jax.tree_util.tree_leaves(xp)[0].shape[:-1])
        check_state(state, jax.eval_shape(self.initial_state, params), batch)
        return self.recur(params, state, xp)


def cached_factory(factory: Callable[..., Cell]) -> Callable[..., Cell]:
    """Make a cell factory return the same :class:`Cell` for equal arguments.

    ``gr.lstm(64)``, ``gr.lstm(64, 1.0)`` and ``make_cell("lstm", 64)`` are then one cell,
    so ``jax.jit(f, static_argnums=0)`` does not retrace for a cell built twice. Arguments
    are compared with their types (``True`` is not ``1``); calls with an unhashable
    argument (e.g. an array) build a new cell each time.
    """
    signature = inspect.signature(factory)

    @functools.lru_cache(maxsize=256)
    def build(key: tuple) -> Cell:
        return factory(**{name: value for name, _, value in key})

    @functools.wraps(factory)
    def make(*args: Any, **kwargs: Any) -> Cell:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple((name, type(v), v) for name, v in bound.arguments.items())
        try:
            hash(key)
        except TypeError:
            return factory(*args, **kwargs)
        return build(key)

    return make


def make_config(**options: Any) -> tuple[tuple[str, Any], ...]:
    """A factory's keyword arguments as the hashable ``Cell.config``: sorted pairs."""
    return tuple(sorted(options.items()))


# ----------------------------------------------------------------------------- checks


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise ValueError naming ``name`` if it is not an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f"{name} must be an integer >= 1, got {value!r} of type {type(value).__name__}"
        )
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


def check_hidden_size(hidden_size: Any) -> int:
    """Return ``hidden_size`` as an int, or raise ValueError if it is not an integer >= 1."""
    return check_positive_int(hidden_size, "hidden_size")


def check_input_size(input_size: Any) -> int:
    """Return ``input_size`` as an int, or raise ValueError if it is not an integer >= 1."""
    return check_positive_int(input_size, "input_size")


# Array libraries whose tensors JAX would not take as they are (or only by copying them
# silently, cutting their autodiff): refused by name with how to convert.
_FOREIGN_FRAMEWORKS = frozenset({"torch", "tensorflow", "paddle", "mxnet", "cupy"})


def to_jax_array(x: Any) -> Array:
    """``x`` as a JAX array, with JAX's dtype rules (a float64 numpy array is float32 unless
    x64 is on). A numpy array is placed with ``jax.device_put`` (uncommitted, as
    ``jnp.asarray`` makes it), which compiles nothing, where ``jnp.asarray`` compiles a
    conversion program per shape; lists and scalars go through ``jnp.asarray``; a JAX array
    or tracer comes back unchanged."""
    if isinstance(x, np.ndarray):
        return jax.device_put(x)
    return jnp.asarray(x)


def check_not_foreign_array(x: Any, what: str) -> None:
    """Raise TypeError if ``x`` is an array of another framework (a torch or TensorFlow
    tensor, ...): gatedrnn takes JAX and numpy arrays (and lists, scalars), and converting
    one silently would hide that no gradient flows back to it."""
    framework = type(x).__module__.split(".")[0]
    if framework in _FOREIGN_FRAMEWORKS:
        kind = f"{framework}.{type(x).__name__}"
        raise TypeError(
            f"{what} is a {kind}, not a JAX or numpy array; convert it with .numpy() (a torch "
            f"tensor: {what}.detach().cpu().numpy()) or jnp.asarray({what})"
        )


def check_key(key: Any, what: str = "key") -> None:
    """Raise TypeError unless ``key`` is a JAX PRNG key: a typed key (``jax.random.key``)
    or a raw ``uint32`` key array (``jax.random.PRNGKey``), as ``jax.random`` takes them."""
    if isinstance(key, jax.Array) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32
    ):
        return
    if isinstance(key, np.ndarray) and key.dtype == np.uint32:
        return
    if isinstance(key, (jax.Array, np.ndarray)):
        got = f"an array of dtype {key.dtype} and shape {tuple(key.shape)}"
    else:
        got = f"{type(key).__name__} {reprlib.repr(key)}"
    is_int = isinstance(key, (int, np.integer)) and not isinstance(key, bool)
    seed = int(key) if is_int and 0 <= key < 2**32 else 0
    raise TypeError(
        f"{what} must be a JAX PRNG key, e.g. jax.random.key({seed}) (or "
        f"jax.random.PRNGKey({seed})), got {got}"
    )


def check_input(x: Any, w_x: Array, what: str = "x") -> Array:
    """Check an input's trailing size and dtype against the input weight ``w_x (I, G*H)``.

    A numpy array (or list) is first made a JAX array with JAX's own dtype rules, as
    ``jax.jit`` would: a float64 numpy input is float32 unless x64 is on, the same in
    ``step`` and in every layout of :func:`gatedrnn.scan`.

    Raises:
      ValueError: ``x`` has rank 0 or its last axis is not ``I``.
      TypeError: ``x`` is not floating point, its dtype differs from the params', or it is
        an array of another framework (:func:`check_not_foreign_array`).
    """
    check_not_foreign_array(x, what)
    x = to_jax_array(x) if isinstance(x, np.ndarray) or not hasattr(x, "shape") else x
    input_size = w_x.shape[0]
    if x.ndim < 1:
        raise ValueError(f"{what} must have shape (..., input_size={input_size}), got a scalar")
    if x.shape[-1] != input_size:
        raise ValueError(
            f"{what} has {x.shape[-1]} features on its last axis (shape {tuple(x.shape)}), "
            f"but the params expect input_size={input_size}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{what} must be floating point like the params ({w_x.dtype}), got {x.dtype}; "
            f"cast it, e.g. x.astype(jnp.{w_x.dtype})"
        )
    if x.dtype != w_x.dtype:
        raise TypeError(
            f"{what} has dtype {x.dtype} but the params are {w_x.dtype}; cast one to the "
            "other (gatedrnn never promotes silently)"
        )
    return x


def check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    """Return ``batch_shape`` as a tuple of ints >= 0, or raise ValueError."""
    if isinstance(batch_shape, (int, np.integer)):
        batch_shape = (int(batch_shape),)
    try:
        if isinstance(batch_shape, (str, bytes)):
            raise TypeError
        shape = tuple(int(d) for d in batch_shape)
    except (TypeError, ValueError):
        raise ValueError(f"batch_shape must be a tuple of ints, got {batch_shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"batch_shape must have sizes >= 0, got {shape}")
    return shape


def check_params_type(params: Any, cls: type, name: str) -> None:
    """Raise TypeError unless ``params`` is a ``cls`` (an instance of the cell's own params
    NamedTuple, e.g. ``LSTMParams``): checked by type, so the params of another cell whose
    field names (and sizes) happen to coincide are refused, naming both types."""
    if isinstance(params, cls):
        return
    fields = cls._fields
    layout = f"{cls.__name__}({', '.join(fields)})"
    got = type(params).__name__
    missing = [f for f in fields if not hasattr(params, f)]
    if missing:
        raise TypeError(
            f"a {name} cell needs params {layout}, got {got} without {', '.join(missing)}"
        )
    raise TypeError(
        f"a {name} cell needs params of type {cls.__name__}, got {got} (the params of another "
        f"cell, with the same field names?); convert them explicitly if you mean it, e.g. "
        f"{cls.__name__}(*params)"
    )


def check_param_leaves(params: Any, cls: type, name: str, first: str) -> dict[str, Array]:
    """What every cell's params check starts with: the type, then one floating dtype.

    Args:
      params: the params given.
      cls: the cell's params NamedTuple (checked by type, :func:`check_params_type`).
      name: the cell's name, for messages.
      first: the field whose dtype the others must share (named in the message).

    Returns:
      The fields as ``{name: array}``.

    Raises:
      TypeError: another type, a field that is not an array (or another framework's
        tensor), or dtypes that are not one float type.
    """
    check_params_type(params, cls, name)
    leaves = {f: getattr(params, f) for f in cls._fields}
    for f, a in leaves.items():
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"params.{f} must be an array, got {type(a).__name__}")
        check_not_foreign_array(a, f"params.{f}")
    dtype = leaves[first].dtype
    for f, a in leaves.items():
        if not jnp.issubdtype(a.dtype, jnp.floating) or a.dtype != dtype:
            raise TypeError(
                f"params must all share one floating dtype; params.{first} is {dtype}, "
                f"params.{f} is {a.dtype}"
            )
    return leaves


def check_params(params: Any, cls: type, name: str, hidden_size: int, gates: int) -> None:
    """Check a cell's params against its layout before any math touches them.

    ``params`` must be a ``cls`` (e.g. ``LSTMParams(w_x, w_h, b)``; by type, see
    :func:`check_params_type`), all floating point arrays of one dtype, with
    ``w_x (I, G*H)``, ``w_h (H, G*H)`` and every other field a bias ``(G*H,)``, where
    ``G = gates`` and ``H = hidden_size``.

    Raises:
      TypeError: params of another type (another cell's, even with the same fields), a
        field that is not an array, or dtypes that are not one float type.
      ValueError: a field has the wrong shape (e.g. params of another hidden size or cell).
    """
    leaves = check_param_leaves(params, cls, name, "w_x")
    fields = cls._fields
    got = type(params).__name__
    GH = gates * hidden_size
    g = "" if gates == 1 else str(gates)
    want = {f: (GH,) for f in fields}
    want["w_h"] = (hidden_size, GH)
    for f, a in leaves.items():
        shape = tuple(a.shape)
        if f == "w_x":
            ok = len(shape) == 2 and shape[1] == GH
            expect = f"(input_size, {g}H) = (I, {GH})"
        else:
            ok = shape == want[f]
            expect = f"{'(H, ' + g + 'H)' if f == 'w_h' else '(' + g + 'H,)'} = {want[f]}"
        if not ok:
            raise ValueError(
                f"params.{f} has shape {shape}, but a {name} cell with hidden_size="
                f"{hidden_size} expects {expect} (params {got} from another cell or size?)"
            )


def check_state(state: Any, ref: Any, batch_shape: tuple[int, ...], what: str = "state") -> None:
    """Check a state against a cell's state layout for inputs of batch ``batch_shape``.

    Args:
      state: the state a user passed, leaves ``(*batch, H)``.
      ref: the cell's state for an empty batch (``jax.eval_shape`` of
        ``initial_state(params)``), leaves ``(H,)``: gives the structure, ``H`` and dtype.
      batch_shape: the batch shape of the input the state meets; the two must broadcast.

    Raises:
      ValueError: other structure, last axis not ``H``, or a batch that does not broadcast.
      TypeError: a leaf's dtype differs from the params'.
    """
    ref_leaves, ref_def = jax.tree_util.tree_flatten(ref)
    leaves, treedef = jax.tree_util.tree_flatten(state)
    if treedef != ref_def:
        raise ValueError(f"{what} must have the structure {ref_def}, got {treedef}")
    for leaf, r in zip(leaves, ref_leaves, strict=True):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"{what} leaves must be arrays, got {type(leaf).__name__}")
        shape = tuple(leaf.shape)
        try:
            jnp.broadcast_shapes(shape[:-1], tuple(batch_shape))
            ok = len(shape) >= 1 and shape[-1] == r.shape[-1]
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{what} leaves must have shape (*batch, H) with batch {tuple(batch_shape)} "
                f"(or broadcastable) and H={r.shape[-1]}, got {shape}"
            )
        if leaf.dtype != r.dtype:
            raise TypeError(
                f"{what} has dtype {leaf.dtype} but the params are {r.dtype}; cast one to "
                "the other (gatedrnn never promotes silently)"
            )


def check_initializers(**inits: Any) -> None:
    """Raise TypeError unless every given initializer is callable."""
    for name, fn in inits.items():
        if not callable(fn):
            raise TypeError(
                f"{name} must be a function (key, shape, dtype) -> array, got {type(fn).__name__}"
            )


def check_dtype(dtype: Any) -> jnp.dtype:
    """Return ``dtype`` as a floating numpy dtype, or raise TypeError."""
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"params dtype must be floating point, got {dt}")
    return dt


@functools.lru_cache(maxsize=1)
def memory_limit() -> int | None:
    """Bytes of memory all of JAX's devices have together, or None if unknown.

    Accelerators report their own limit (``memory_stats()["bytes_limit"]``); CPU devices
    share the host's physical memory, counted once.
    """
    total, host = 0, False
    for device in jax.devices():
        try:
            stats = device.memory_stats()
        except Exception:  # backends without memory stats
            stats = None
        if stats and stats.get("bytes_limit"):
            total += int(stats["bytes_limit"])
        else:
            host = True
    if host:
        try:
            total += os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return total or None


def check_fits_in_memory(nbytes: int, what: str) -> None:
    """Raise ValueError, with the size needed, if ``nbytes`` exceed :func:`memory_limit`.

    Called before an array is made (params at ``init``, the input projection in
    :func:`gatedrnn.scan`), so a size that cannot fit fails with what it would need rather
    than with an allocation error from XLA.
    """
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        gib = 2.0**30
        raise ValueError(
            f"{what} would take {nbytes / gib:,.1f} GiB, more than the {limit / gib:,.1f} GiB of "
            "memory the devices have together; use smaller sizes (or more devices)"
        )


def check_param_memory(
    name: str, input_size: int, hidden_size: int, gates: int, dtype: Any, recurrent: bool = True
) -> None:
    """:func:`check_fits_in_memory` for a cell's params: ``w_x (I, G*H)``, ``w_h (H, G*H)``
    (if ``recurrent``) and biases."""
    rows = input_size + (hidden_size if recurrent else 0) + 2
    nbytes = rows * gates * hidden_size * jnp.dtype(dtype).itemsize
    check_fits_in_memory(
        nbytes,
        f"the params of a {name} cell with input_size={input_size}, "
        f"hidden_size={hidden_size} ({jnp.dtype(dtype).name})",
    )


# ------------------------------------------------------------------------ initializers


def fan_in_normal(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """Normal with variance ``1 / fan_in`` where ``fan_in = shape[0]`` (LeCun normal)."""
    return jax.random.normal(key, shape, dtype) / jnp.sqrt(jnp.asarray(shape[0], dtype))


def orthogonal(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """A (semi-)orthogonal matrix of ``shape (n, m)`` drawn uniformly (QR with sign fix)."""
    n, m = shape
    a = jax.random.normal(key, (max(n, m), min(n, m)), jnp.float32)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    if n < m:
        q = q.T
    return q.astype(dtype)


def zeros(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """All zeros (the key is ignored)."""
    del key
    return jnp.zeros(shape, dtype)


def blockwise(init: Initializer, num_blocks: int) -> Initializer:
    """Apply ``init`` to each of ``num_blocks`` column blocks ``(n, m / num_blocks)``.

    Used to make the recurrent weight ``(H, G*H)`` orthogonal gate by gate.
    """

    def init_fn(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        n, m = shape
        width = m // num_blocks
        keys = jax.random.split(key, num_blocks)
        return jnp.concatenate([init(k, (n, width), dtype) for k in keys], axis=1)

    return init_fn


def check_gate_bias(value: Any, name: str, t_max: Any) -> float | str:
    """A gate's init bias: a finite real number, or ``"chrono"`` with an int ``t_max >= 2``.

    Returns:
      ``value`` as a float, or ``"chrono"``.

    Raises:
      TypeError: ``value`` is neither a real number nor ``"chrono"``.
      ValueError: a non-finite number; ``"chrono"`` without a valid ``t_max``; or
        ``t_max`` given without ``"chrono"``.
    """
    if isinstance(value, str) and value == "chrono":
        if isinstance(t_max, bool) or not isinstance(t_max, (int, np.integer)) or t_max < 2:
            raise ValueError(
                f'{name}="chrono" needs t_max, the longest dependency in steps, an integer '
                f">= 2, got t_max={t_max!r}"
            )
        return "chrono"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f'{name} must be a real number, got {value!r} (or "chrono" with t_max)')
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {float(value)}")
    if t_max is not None:
        raise ValueError(f't_max is only used with {name}="chrono", got {name}={value!r}')
    return float(value)


def gate_bias(key: Array, value: float | str, size: int, t_max: int | None, dtype: Any) -> Array:
    """A gate's init bias ``(size,)``: ``value`` everywhere, or chrono initialization.

    ``value="chrono"`` (Tallec & Ollivier 2018) draws ``log U(1, t_max - 1)`` per unit: a
    gate ``sigmoid(b)`` that keeps the state then has characteristic time
    ``1 / (1 - sigmoid(b)) = 1 + exp(b)`` in ``[2, t_max]``, spread over the range of
    dependencies the task needs. ``value`` is checked by :func:`check_gate_bias`. Used as::

        LSTM: b_f += gate_bias; with "chrono" also b_i -= b_f's draw
        GRU:  b_xz += gate_bias
    """
    if value == "chrono":
        u = jax.random.uniform(key, (size,), jnp.float32, minval=1.0, maxval=float(t_max - 1))
        return jnp.log(u).astype(dtype)
    return jnp.full((size,), value, dtype)


def make_state_zeros(hidden_size: int, dtype: Any, batch_shape: Any) -> Array:
    """Zeros of shape ``(*batch_shape, hidden_size)``."""
    return jnp.zeros((*check_batch_shape(batch_shape), hidden_size), dtype)


def state_output(params: Any, state: Array, xp: Any) -> Array:
    """``output`` of a cell that emits its state: ``y = h`` (params and input unused)."""
    del params, xp
    return state


def mask_steps(valid: Array | None, a: Array, b: Array) -> tuple[Array, Array]:
    """Coefficients of ``h' = a h + b`` that keep the state at steps where ``valid`` is False.

    Args:
      valid: None or ``(T, *batch)`` bools.
      a, b: ``(T, *batch, n)``.

    Returns:
      ``(a, b)`` with ``a = 1, b = 0`` at invalid steps (the identity step).
    """
    if valid is None:
        return a, b
    v = valid[..., None]
    return jnp.where(v, a, jnp.ones_like(a)), jnp.where(v, b, jnp.zeros_like(b))


def split_gates(z: Array, num: int) -> list[Array]:
    """Split the last axis of ``z`` into ``num`` equal gate blocks."""
    return jnp.split(z, num, axis=-1)


def sigmoid_tanh_blocks(z: Array, kinds: str) -> list[Array]:
    """Sigmoid or tanh on each gate block of ``z (..., len(kinds) * H)``, in one pass.

    ``kinds`` names each block's function, ``"s"`` (sigmoid) or ``"t"`` (tanh), e.g.
    ``"ssts"`` for the LSTM's i, f, g, o. The whole array goes through one ``tanh``:
    ``sigmoid(x) = (1 + tanh(x / 2)) / 2`` (exact identity), ``tanh(x) = tanh(x)``, so the
    activations are ``tanh(z * s) * s + s'`` with per-block constants. One fused
    elementwise pass over the whole array instead of one per block: XLA CPU runs a fusion
    that reads several slices of one array inside a loop slower than one that reads it
    whole (benchmarks/rnn_speed.py, levers).

    Returns:
      The activated blocks, each ``(..., H)``.
    """
    num = len(kinds)
    H = z.shape[-1] // num
    scale = np.repeat([0.5 if k == "s" else 1.0 for k in kinds], H).astype(z.dtype)
    shift = np.repeat([0.5 if k == "s" else 0.0 for k in kinds], H).astype(z.dtype)
    return split_gates(jnp.tanh(z * scale) * scale + shift, num)
