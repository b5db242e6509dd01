"""Shared helpers of the benchmark scripts.

Nothing here imports Keras at import time: a script parses its arguments,
calls `select_backend()` (which sets `KERAS_BACKEND` before the first Keras
import) and only then imports Keras and the package.

Helpers:
- `select_backend`: the backend from `--backend` or `KERAS_BACKEND`.
- `compile_fn`, `grad_fn`, `block`: one compiled function / gradient /
  synchronisation API over JAX (`jax.jit`), TensorFlow
  (`tf.function(jit_compile=True)`) and PyTorch (eager).
- `stateless`: run a Keras layer's method as a pure function of its weights
  (`keras.StatelessScope`), so the weights are arguments of the compiled
  program (as in a real training step) and never baked-in constants.
- `interleaved_timing`, `paired_ratio`: side-by-side timing, systems
  alternating within each round; medians and paired ratios.
- `add_host_malloc_argument`, `configure_host_malloc`: `--host-malloc`,
  glibc's malloc kept from returning fresh pages to each call (timing
  scripts).
- `rss_bytes`, `xla_memory`: process resident memory, and the buffer
  sizes XLA assigned to one compiled JAX program.
- `write_json`, `print_table`.
"""

import json
import os
import platform
import random
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_common_arguments(parser, default_backend=None):
    parser.add_argument(
        "--short", action="store_true", help="fast mode (smaller sweeps, fewer repetitions)"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke-test mode: tiny sizes, seconds; results are not written "
        "to benchmarks/results unless --out is given",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=default_backend,
        help="Keras backend (default: $KERAS_BACKEND, else jax). Sets "
        "KERAS_BACKEND before Keras is imported.",
    )
    parser.add_argument("--out", default=None, help="output JSON path (the PNG goes next to it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of PyTorch (0: PyTorch's default). Default 1: "
        "on a small shared machine PyTorch's OpenMP barriers spin for tens "
        "of ms per op when its threads are descheduled (see README)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")


HOST_MALLOC_MODES = ("heap", "glibc")


def add_host_malloc_argument(parser):
    parser.add_argument(
        "--host-malloc",
        choices=HOST_MALLOC_MODES,
        default="heap",
        help="host allocator setting for the timed programs (default: heap). "
        "'heap': glibc's malloc serves every block from one heap and keeps "
        "freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB, "
        "M_ARENA_MAX=1), so a "
        "compiled step reuses the same pages at every call. 'glibc': the "
        "defaults, under which any block over glibc's 32 MiB mmap ceiling "
        "(e.g. XLA's per-call temporary buffer of a train step) is a fresh "
        "mmap at each call and pays one page fault per 4 KiB page (see "
        "README, 'Profile of the LTM overhead')",
    )


def configure_host_malloc(mode):
    """Apply `--host-malloc` (glibc only; a no-op elsewhere). Returns what
    was set, for the JSON's environment."""
    if mode != "heap":
        return {"mode": mode}
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        # mallopt parameters of glibc's malloc.h. One arena: the heaps of
        # the other arenas are mmapped and given back when empty, which
        # faults their pages in again at the next call.
        m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
        ok = all(
            libc.mallopt(param, value)
            for param, value in ((m_mmap_max, 0), (m_trim_threshold, 1 << 30), (m_arena_max, 1))
        )
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        ok = False
    if not ok:
        return {"mode": "glibc", "note": "mallopt unavailable: defaults kept"}
    return {"mode": "heap", "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": 1 << 30, "M_ARENA_MAX": 1}


def select_backend(requested=None, torch_threads=None):
    """Set KERAS_BACKEND (before Keras is imported) and return it."""
    current = os.environ.get("KERAS_BACKEND")
    backend = requested or current or "jax"
    if "keras" in sys.modules and current and current != backend:
        raise RuntimeError(
            f"Keras is already imported with backend {current!r}; cannot "
            f"switch to {backend!r}. Set KERAS_BACKEND before starting."
        )
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "torch" and torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(torch_threads)
        import torch

        torch.set_num_threads(torch_threads)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    return backend


def output_path(args, name):
    if args.out:
        return args.out
    if args.tiny:
        return None
    return os.path.join(RESULTS_DIR, f"{name}.json")


# -- compiled functions over the three backends ---------------------------


def backend():
    import keras

    return keras.backend.backend()


def compile_fn(fn, jit=True):
    """`fn` compiled with XLA on JAX/TF; returned as is on torch or jit=False."""
    if not jit:
        return fn
    b = backend()
    if b == "jax":
        import jax

        return jax.jit(fn)
    if b == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=False)
    return fn


def grad_fn(loss_fn, jit=True):
    """`(params, *args) -> ((loss, aux), grads)` for `loss_fn(params, *args)
    -> (loss, aux)`; the gradient is taken with respect to `params` (a list)."""
    b = backend()
    if b == "jax":
        import jax

        g = jax.value_and_grad(loss_fn, has_aux=True)
        return jax.jit(g) if jit else g
    if b == "tensorflow":
        import tensorflow as tf

        def g(params, *args):
            with tf.GradientTape() as tape:
                tape.watch(params)
                loss, aux = loss_fn(params, *args)
            return (loss, aux), tape.gradient(loss, params)

        return tf.function(g, jit_compile=True) if jit else g
    import torch

    def g(params, *args):
        params = [p.detach().requires_grad_(True) for p in params]
        loss, aux = loss_fn(params, *args)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return (loss.detach(), _detach(aux)), grads

    return g


def _detach(tree):
    import keras

    return keras.tree.map_structure(lambda x: x.detach() if hasattr(x, "detach") else x, tree)


def block(tree):
    """Wait until every array of `tree` is computed (JAX dispatches async)."""
    if backend() == "jax":
        import jax

        jax.block_until_ready(tree)
    return tree


def stateless(layer, method):
    """`method` (bound to `layer`) as a pure function of the weights.

    Returns `(params, f)`: the current variable values and
    `f(params, *args, **kwargs) -> (result, losses)`, where the layer's
    variables take the values `params` and `losses` are the ones added with
    `add_loss` during the call (the KL regulariser).
    """
    import keras

    variables = list(layer.variables)
    params = [v.value for v in variables]

    def f(params, *args, **kwargs):
        with keras.StatelessScope(
            state_mapping=list(zip(variables, params)), collect_losses=True
        ) as scope:
            result = method(*args, **kwargs)
            losses = list(scope.losses)
        return result, losses

    return params, f, variables


# -- timing -----------------------------------------------------------------


def interleaved_timing(
    cases,
    rounds,
    warmup=1,
    budget_s=None,
    min_rounds=3,
    seed=0,
    inner=1,
    inner_target_s=0.05,
):
    """Time every case once per round, cases alternating within a round.

    `cases`: dict key -> zero-argument callable that runs one call and waits
    for its result. Each round visits the cases in a fresh random order, so
    slow phases of a shared machine hit all cases alike. A visit runs a case
    `k` times back to back and keeps the fastest call (`k` ≤ `inner`, fewer
    for slow cases so a visit lasts about `inner_target_s`): a preempted call
    does not count, a slow phase of the machine still does. Returns dict
    key -> list of seconds (one per round).
    """
    rng = random.Random(seed)
    repeats = {}
    for key, f in cases.items():
        for _ in range(warmup):
            f()
        t0 = time.perf_counter()
        f()
        t1 = time.perf_counter() - t0
        repeats[key] = max(1, min(inner, int(inner_target_s / max(t1, 1e-9))))
    times = {k: [] for k in cases}
    keys = list(cases)
    start = time.perf_counter()
    for r in range(rounds):
        order = keys[:]
        rng.shuffle(order)
        for k in order:
            best = float("inf")
            for _ in range(repeats[k]):
                t0 = time.perf_counter()
                cases[k]()
                best = min(best, time.perf_counter() - t0)
            times[k].append(best)
        if budget_s is not None and r + 1 >= min_rounds:
            if time.perf_counter() - start > budget_s:
                break
    return times


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return float("nan")
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def paired_ratio(a, b):
    """Median over rounds of a[r] / b[r] (a and b timed in the same round)."""
    n = min(len(a), len(b))
    return median([a[i] / b[i] for i in range(n)])


def summary(ts):
    return {
        "median_s": median(ts),
        "min_s": min(ts) if ts else float("nan"),
        "rounds": len(ts),
    }


# -- memory -----------------------------------------------------------------


def rss_bytes():
    """Resident set size of this process (Linux /proc, else ru_maxrss)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # pragma: no cover - non-Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def aot(fn, *args):
    """`fn` compiled ahead of time for `args`, and XLA's memory analysis.

    On JAX: `(fn.lower(*args).compile(), memory)` (one compile serves both
    the calls and the analysis); elsewhere `(fn, None)`.
    """
    if backend() != "jax":
        return fn, None
    compiled = fn.lower(*args).compile()
    return compiled, _memory_of(compiled)


def xla_memory(jitted, *args):
    """Bytes XLA assigns to one compiled JAX program (None elsewhere).

    `peak_bytes` = arguments + outputs + temporaries − aliased, i.e. every
    buffer live during one call, from XLA's buffer assignment (exact and
    deterministic, unlike allocator-level RSS deltas). `args` may be
    `jax.ShapeDtypeStruct`s: nothing is run.
    """
    if backend() != "jax":
        return None
    try:
        return _memory_of(jitted.lower(*args).compile())
    except Exception:  # pragma: no cover - depends on the jax version
        return None


def _memory_of(compiled):
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # pragma: no cover
        return None
    if analysis is None:
        return None
    arg = int(analysis.argument_size_in_bytes)
    out = int(analysis.output_size_in_bytes)
    tmp = int(analysis.temp_size_in_bytes)
    alias = int(analysis.alias_size_in_bytes)
    return {
        "argument_bytes": arg,
        "output_bytes": out,
        "temp_bytes": tmp,
        "alias_bytes": alias,
        "peak_bytes": arg + out + tmp - alias,
    }


def tree_bytes(tree):
    import keras
    import numpy as np

    total = 0
    for x in keras.tree.flatten(tree):
        shape = tuple(x.shape)
        itemsize = np.dtype(keras.backend.standardize_dtype(x.dtype)).itemsize
        total += int(np.prod(shape, dtype=np.int64)) * itemsize
    return total


# -- output -----------------------------------------------------------------


def environment():
    import keras

    info = {
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    try:
        info["load_average"] = os.getloadavg()
    except OSError:  # pragma: no cover
        pass
    b = keras.backend.backend()
    try:
        if b == "jax":
            import jax

            info["jax"] = jax.__version__
        elif b == "tensorflow":
            import tensorflow as tf

            info["tensorflow"] = tf.__version__
        elif b == "torch":
            import torch

            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
    except Exception:  # pragma: no cover
        pass
    info["cpu_model"] = _cpu_model()
    # Every backend's version, read without importing it: the multi-backend
    # benchmarks time children whose backend is not this process's.
    from importlib import metadata

    for package in ("jax", "jaxlib", "tensorflow", "torch"):
        try:
            info.setdefault("versions", {})[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


def _cpu_model():
    """The CPU's model name and its widest vector units (timings differ
    between CPUs of one ISA: the backends' matmul kernels pick by them)."""
    name, flags = platform.processor() or None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                if name and flags:
                    break
    except OSError:  # pragma: no cover (not Linux)
        pass
    vector = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2", "fma") if f in flags]
    return f"{name} ({' '.join(vector)})" if vector else name


def _clean(obj):
    import math

    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return _clean(obj.item())
        except Exception:
            return str(obj)
    return obj


def write_json(path, obj):
    if path is None:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(obj), f, indent=1, sort_keys=False)
        f.write("\n")
    print(f"wrote {path}")


def print_table(rows, columns, title=None):
    """Print a list of dicts as an aligned text table."""

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            if v != v:
                return "nan"
            a = abs(v)
            if a and (a >= 1e5 or a < 1e-3):
                return f"{v:.3g}"
            return f"{v:.3f}" if a < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    if title:
        print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    sys.stdout.flush()
