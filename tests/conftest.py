"""Shared test helpers: the cells under test and a plain Python reference loop.

:data:`CELL_FACTORIES` is built from the registry (``gatedrnn.cells.CELLS``), so every
registered cell runs through the generic tests (test_scan, test_cells, test_linen,
test_nnx, test_diagnostics, ...) with no edit here; a few option variants are added. Tests
that only make sense for some cells select them by capability (``cell.split``,
``cell.parallel``, ``cell.gates``, the state's fields), never by name.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings

import gatedrnn as gr
from gatedrnn.cells import CELLS
from gatedrnn.cells.base import Cell, make_config

# Tests compile with XLA's older CPU code emitters (``--xla_cpu_use_fusion_emitters=false``:
# about 40% less compile time on the suite's small programs), in one LLVM module per
# program (``--xla_cpu_parallel_codegen_split_count=1``: splitting a tiny program for
# parallel codegen costs more than it saves on 2 cores) and without XNNPACK's fusions
# (``--xla_cpu_use_xnnpack=false``); the same numbers within the tests' tolerances. Set
# before the first computation starts the CPU backend (nothing in the imports above
# computes); subprocesses the tests start inherit them.
# GATEDRNN_TEST_OPTIMIZE=1 keeps XLA's defaults here too.
_ALL_OPTIMIZED = os.environ.get("GATEDRNN_TEST_OPTIMIZE", "").lower() in ("1", "true", "yes")
_FAST_COMPILE_FLAGS = {
    "--xla_cpu_use_fusion_emitters": "false",
    "--xla_cpu_parallel_codegen_split_count": "1",
    "--xla_cpu_use_xnnpack": "false",
}
if not _ALL_OPTIMIZED:
    _flags = os.environ.get("XLA_FLAGS", "")
    _flags += "".join(f" {k}={v}" for k, v in _FAST_COMPILE_FLAGS.items() if k not in _flags)
    os.environ["XLA_FLAGS"] = _flags.strip()
if not _ALL_OPTIMIZED:
    # the scripts and children the tests start compile without most XLA optimizations
    # too (this process reads it per test: _compile_fast_unless_optimizer_tested below)
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

VARIANTS = {
    "vanilla_relu": lambda h: gr.vanilla(h, activation="relu"),
    "vanilla_linear": lambda h: gr.vanilla(h, activation="linear"),
    "gru_reset_before": lambda h: gr.gru(h, reset_after=False),
}
"""Option variants tested besides each registered cell's defaults."""

CELL_FACTORIES = {
    **{name: (lambda h, factory=factory: factory(h)) for name, factory in CELLS.items()},
    **VARIANTS,
}
"""Every registered cell (by its registry name, default options) and :data:`VARIANTS`."""


@pytest.fixture(params=sorted(CELL_FACTORIES))
def cell_name(request: pytest.FixtureRequest) -> str:
    return request.param


def make(cell_name: str, hidden: int = 5, inp: int = 3, dtype=jnp.float32, seed: int = 0):
    """A cell, random params (biases made non-zero) and a key for inputs."""
    cell = CELL_FACTORIES[cell_name](hidden)
    k_init, k_bias, k_x = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k_init, inp, dtype)
    # Non-zero biases so that every term of the equations is exercised.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(k_bias, len(leaves))
    leaves = [
        leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype) if leaf.ndim == 1 else leaf
        for leaf, k in zip(leaves, keys)
    ]
    return cell, jax.tree_util.tree_unflatten(treedef, leaves), k_x


def loop_scan(cell, params, xs_tm, state):
    """Reference: a Python loop of ``cell.step`` over a time-major ``xs (T, *batch, I)``."""
    ys = []
    for t in range(xs_tm.shape[0]):
        state, y = cell.step(params, state, xs_tm[t])
        ys.append(y)
    if ys:
        return state, jnp.stack(ys)
    return state, jnp.zeros((0, *xs_tm.shape[1:-1], cell.hidden_size), xs_tm.dtype)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread (for reference runs of xlstm and the like): on the tests' tiny
    tensors its idle worker threads only spin, burning CPU (about 2 s over test_mlstm's
    xlstm runs on 2 cores); the previous thread count comes back."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def normal(seed: int, shape: tuple[int, ...], dtype=np.float32, scale: float = 1.0):
    """Standard normal draws (times ``scale``) made by NumPy: jax.random compiles an XLA
    program per shape."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def normal_like(shapes, seed: int = 0, scale: float = 0.5):
    """A pytree of NumPy normal draws (times ``scale``) with the structure, shapes and
    dtypes of ``shapes`` (e.g. ``jax.eval_shape`` of an init: nothing compiled), leaf ``i``
    drawn with seed ``seed + i``: weights for tests that compare two runs of the same
    weights (an eager init compiles each of its operations; the initializers are tested
    where they are the point)."""
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    draws = [normal(seed + i, x.shape, x.dtype, scale) for i, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, draws)


def nnx_with_numpy_params(make, seed: int = 0):
    """The NNX module ``make()`` builds, traced only (``nnx.eval_shape``: the init runs
    abstractly, nothing compiles), its params then drawn by NumPy (:func:`normal_like`):
    NNX makes params eagerly, and an eager init compiles each of its operations."""
    from flax import nnx

    graphdef, params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    return nnx.merge(graphdef, normal_like(params, seed), rest)


def sigmoid(z):
    """The logistic function in NumPy, for reference equations."""
    return 1.0 / (1.0 + np.exp(-z))


def to_numpy(tree):
    """Every leaf of ``tree`` as a NumPy array: tests index, slice and reduce results in
    NumPy, because each eager jnp operation compiles an XLA program per shape."""
    return jax.tree_util.tree_map(np.asarray, tree)


_jit_scan = jax.jit(
    gr.scan,
    static_argnums=0,
    static_argnames=("reverse", "time_major", "parallel", "truncate", "fused"),
)


def scan_numpy(*args, **kwargs):
    """``gr.scan`` compiled once per cell, shapes and options (an eager call compiles every
    operation), its result as NumPy arrays (:func:`to_numpy`)."""
    return to_numpy(_jit_scan(*args, **kwargs))


# ------------------------------------------- a custom cell with nested params (not registered)


class NestedInput(NamedTuple):
    w: jax.Array  # (I, H)
    b: jax.Array  # (H,), drawn as -column sums of w: tied to w at init


class NestedParams(NamedTuple):
    inp: NestedInput
    decay: tuple  # (logit (H,),): a tuple field


def nested_cell(hidden_size: int) -> Cell:
    """A diagonal linear cell ``h' = sigmoid(d) * h + x w + b`` whose params are nested
    (a NamedTuple in a field, a tuple field) and tied at init (``b = -sum_i w_i``): what the
    Flax modules must handle for any cell, not only ``w_x/w_h/b`` layouts."""
    H = hidden_size

    def init(key, input_size, dtype=jnp.float32):
        kw, kd = jax.random.split(key)
        w = jax.random.normal(kw, (input_size, H), dtype)
        d = jax.random.normal(kd, (H,), dtype)
        return NestedParams(NestedInput(w, -w.sum(0)), (d,))

    def project(params, x):
        return x @ params.inp.w + params.inp.b

    def recur(params, h, xp):
        h = jax.nn.sigmoid(params.decay[0]) * h + xp
        return h, h

    return Cell(
        init=init,
        initial_state=lambda params, batch_shape=(): jnp.zeros(
            (*batch_shape, H), params.inp.w.dtype
        ),
        project=project,
        recur=recur,
        output=lambda params, h, xp: h,
        hidden_size=H,
        name="nested",
        config=make_config(hidden_size=H),
    )


# Most of the suite compiles with XLA's optimizations off (compiles take about half as
# long, and the numbers the tests compare are the same math): every test module except
# those below, which check what the optimizer does (memory saved by remat). The
# benchmarks' quick runs check that their sections run and land in the tables, never
# their timings, so they compile fast too (58 s -> 25 s for test_benchmarks on one core).
# GATEDRNN_TEST_OPTIMIZE=1 runs every test on the optimized compiler (to compare).
_OPTIMIZED_MODULES = frozenset({"test_remat"})


@pytest.fixture(autouse=True)
def _compile_fast_unless_optimizer_tested(request: pytest.FixtureRequest):
    module = request.node.module.__name__.rpartition(".")[2] if request.node.module else ""
    if _ALL_OPTIMIZED or module in _OPTIMIZED_MODULES:
        yield
        return
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def fast_compile():
    """XLA without most of its optimizations for one test (compiles take about half as
    long): for tests that compare runs of one program with each other (resume, ensembles,
    devices), never for speed, memory or exact numbers against an optimized program."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


# ------------------------------------------------ one XLA compilation cache per test run
# Many tests build the same computation afresh (a new cell or closure each time), which
# jit's in-memory caches cannot see; JAX's disk cache is keyed by the compiled program, so
# it compiles each once per run. The folder is new for every run (never stale, and the
# suite's time is measured cold) and shared by the pytest-xdist workers (the controller
# makes it before they start); subprocesses the tests start inherit it through the
# environment. It saves about a third of the suite's CPU time.
_XLA_CACHE_ENV = "GATEDRNN_TEST_XLA_CACHE"
_OWN_XLA_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(_XLA_CACHE_ENV) is None:  # the controller (or a run without -n)
        os.environ[_XLA_CACHE_ENV] = tempfile.mkdtemp(prefix="gatedrnn-test-xla-cache-")
        config.stash[_OWN_XLA_CACHE] = os.environ[_XLA_CACHE_ENV]
    folder = os.environ[_XLA_CACHE_ENV]
    if folder:  # GATEDRNN_TEST_XLA_CACHE="" turns it off
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder)
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_OWN_XLA_CACHE, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _release_output_claims():
    """A test that calls an experiment's ``main`` in this process (not through
    ``cli.run``) leaves its output folders claimed; end the claims with the test, or the
    pytest-xdist worker holds them (``experiments/results`` by default) until it exits,
    and another test's run finds the folder in use, or a stale lock after the exit."""
    yield
    cli = sys.modules.get("experiments.cli")
    if cli is not None:
        cli.release_outputs()


# Python's cyclic garbage collector every 10,000 net allocations, not 700: tracing and
# lowering allocate millions of short-lived objects, and each full collection walks JAX's
# growing caches (about 0.1 s each late in a worker). Time in the collector
# (`python -m pytest --compile-stats tests/test_diagnostics.py tests/test_linen.py
# tests/test_scan.py`): 7.4 s with the defaults, 1.8 s with these, of about 150 s of CPU
# on a slow host; 3.9 s and 0.9 s (CPU 67 s and 60 s) on a faster one.
gc.set_threshold(10_000, 10, 10)


@pytest.fixture(scope="module")
def frozen_heap():
    """The test process's heap frozen (``gc.freeze``) for a module: a full collection then
    walks only what the module's tests allocate. For tests of failed checkpoint reads, each
    of which runs ``gc.collect()`` (so that orbax's abandoned coroutines echo inside the
    read's scope): in a pytest-xdist worker that has run hundreds of tests, walking the
    whole heap costs most of such a test's time."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


# --------------------------------------------------------------- hypothesis profiles
# Few examples on a developer's machine, more in CI (.ci/run sets CI=true); derandomized,
# so a failure reproduces. Tests take max_examples from the profile, never their own.
_HYPOTHESIS = {"deadline": None, "derandomize": True, "print_blob": True}
settings.register_profile("dev", max_examples=5, **_HYPOTHESIS)
settings.register_profile("ci", max_examples=10, **_HYPOTHESIS)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")


# ---------------------------------------------------------------- the slow marker
# ``slow`` (declared in pyproject.toml): the test runs a script (its ``main``, or a section
# ``bench_*`` of the benchmark), a subprocess, or several devices or processes (always in a
# subprocess). Applied here, from what a test calls, so a new test is marked without anyone
# remembering to: the names its code refers to (and, one module deep, those of the helpers
# and fixtures it uses) are searched for a script's entry point or a child process.
# ``pytest -m "not slow"`` is the inner loop.
_SLOW_NAMES = frozenset({"main", "subprocess", "Popen"})
_TESTS = os.path.dirname(os.path.abspath(__file__))


def _code_names(code: types.CodeType) -> set[str]:
    """Global and attribute names ``code`` and the functions nested in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _calls_slow(fn: object, seen: set[int]) -> bool:
    """Whether ``fn`` refers to a slow name, itself or through functions of its module."""
    fn = getattr(fn, "__func__", fn)  # bound methods
    fn = getattr(fn, "__wrapped__", fn)  # functools.wraps (hypothesis' given keeps it)
    code = getattr(fn, "__code__", None)
    if code is None or id(code) in seen or not code.co_filename.startswith(_TESTS):
        return False  # pytest's own fixtures (tmp_path, monkeypatch...) are not searched
    seen.add(id(code))
    names = _code_names(code)
    if names & _SLOW_NAMES or any(n.startswith("bench_") for n in names):
        return True  # a script's entry point, a child process, a benchmark's section
    module_globals = getattr(fn, "__globals__", {})
    return any(
        _calls_slow(module_globals[n], seen)
        for n in names
        if isinstance(module_globals.get(n), types.FunctionType)
        and module_globals[n].__module__ == fn.__module__
    )


# ``slow`` also marks the tests listed in tests/slow_tests.txt: those that took longer than
# its threshold in the inner loop, as measured and written by
# ``pytest -n 2 -m "not slow" --record-slow`` (the way PyTorch keeps its list of slow
# tests). Each recording updates the tests it ran and keeps the others' entries; a new
# test is fast until a recording says otherwise.
_SLOW_LIST = os.path.join(_TESTS, "slow_tests.txt")
_SLOW_THRESHOLD_S = 1.0
_durations: dict[str, float] | None = None  # per test, while recording (in the controller)


def _recorded_slow() -> set[str]:
    if not os.path.exists(_SLOW_LIST):
        return set()
    with open(_SLOW_LIST) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-slow",
        action="store_true",
        help=f"rewrite tests/slow_tests.txt: the tests run that took {_SLOW_THRESHOLD_S} s "
        "or longer (setup, call and teardown) are listed, those faster are removed",
    )
    parser.addoption(
        "--compile-stats",
        action="store_true",
        help="at the end, print the XLA compilations (count, compile and lowering seconds), "
        "the seconds in the garbage collector, and the CPU seconds of the test process and "
        "of its children; without -n (the workers' counts are not gathered)",
    )


# --compile-stats: what a test file costs in XLA compilations (the suite's main cost: a
# count is stable where CPU seconds on a shared machine are not)
_COMPILE_EVENTS = {
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lowering",
}
_compile_stats: dict[str, list[float]] = {k: [0, 0.0] for k in _COMPILE_EVENTS.values()}


def _count_compile(event: str, seconds: float, **_: object) -> None:
    if event in _COMPILE_EVENTS:
        stat = _compile_stats[_COMPILE_EVENTS[event]]
        stat[0] += 1
        stat[1] += seconds


_gc_seconds = [0.0, 0.0]  # CPU seconds in the garbage collector; when the current one began


def _time_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_seconds[1] = time.process_time()
    else:
        _gc_seconds[0] += time.process_time() - _gc_seconds[1]


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if config.getoption("--compile-stats"):
        if getattr(config.option, "numprocesses", None):
            terminalreporter.write_line("compile stats: run without -n to get them")
            return
        cpu = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        (n, compile_s), (_, lower_s) = _compile_stats["compile"], _compile_stats["lowering"]
        terminalreporter.write_line(
            f"compile stats: {n} XLA compilations, {compile_s:.1f} s compiling, "
            f"{lower_s:.1f} s lowering, {_gc_seconds[0]:.1f} s collecting garbage; "
            f"CPU {cpu[0].ru_utime + cpu[0].ru_stime:.1f} s, "
            f"children {cpu[1].ru_utime + cpu[1].ru_stime:.1f} s"
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _durations is not None:
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionstart(session: pytest.Session) -> None:
    global _durations
    if session.config.getoption("--compile-stats"):  # only a run that reports them counts
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        gc.callbacks.append(_time_gc)
    if session.config.getoption("--record-slow") and not hasattr(session.config, "workerinput"):
        _durations = {}  # the controller (or a run without -n) sees every test's reports


def pytest_sessionfinish(session: pytest.Session) -> None:
    durations = _durations
    if not durations:
        return
    slow = (_recorded_slow() - durations.keys()) | {
        nodeid for nodeid, seconds in durations.items() if seconds >= _SLOW_THRESHOLD_S
    }
    with open(_SLOW_LIST, "w") as f:
        f.write(
            f"# Tests marked slow because they took {_SLOW_THRESHOLD_S} s or longer in the\n"
            '# inner loop. Written by: python -m pytest -n 2 -m "not slow" --record-slow\n'
        )
        f.writelines(f"{nodeid}\n" for nodeid in sorted(slow))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    recorded = _recorded_slow()
    script_modules = set()
    for item in items:
        fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        funcs = [getattr(item, "function", None)]
        funcs += [defs[-1].func for defs in fixtures.values() if defs]
        seen: set[int] = set()
        if any(_calls_slow(f, seen) for f in funcs if f is not None):
            script_modules.add(item.module)
            item.add_marker(pytest.mark.slow)
        elif item.nodeid in recorded:
            item.add_marker(pytest.mark.slow)
    # The modules that run scripts or subprocesses first, then the others by how many of
    # their tests are slow (their cost, roughly), so under pytest-xdist the long modules
    # start at once and the short ones fill the workers' ends (the workers end together).
    # Whole modules move (a stable sort): a module's tests stay together.
    slow_count = collections.Counter(i.module for i in items if i.get_closest_marker("slow"))
    items.sort(key=lambda i: (i.module not in script_modules, -slow_count[i.module]))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Under ``-n``: each test module sent whole to one worker, modules in their order (slow
    modules first, see above). A worker then traces, lowers and compiles a module's programs
    once: handing tests out one by one had both workers do it for most modules, 15% more CPU
    on the fast subset (user seconds 169 and 177 against 134 and 157, runs interleaved). A
    module's module-scoped fixtures (a subprocess run, the 8-device child) run once."""
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False  # keep the order above
    return LoadFileScheduling(config, log)
