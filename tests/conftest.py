"""Shared fixtures and independent NumPy references for the test suite.

The backend is chosen by KERAS_BACKEND; the suite runs once per backend.
Everything in `Reference` is written from the maths of docs/theory.md in NumPy
float64 and never calls the package, so the tests compare the package with an
independent computation.
"""

import math
import os
import shutil
import sys
import tempfile

# The suite's models are tiny, so XLA's compile time is most of a test's:
# its LLVM optimisation passes cost far more than they save (the JAX run
# about a third shorter, TensorFlow's XLA tests ~10 %), and XLA:CPU's
# MLIR fusion emitters take ~40 % of a small LM's compile (the older
# emitters: train step 8.3 -> 5.1 s, step time the same). Results agree
# within every test's tolerance. Set before Keras starts a backend;
# subprocesses (scripts, examples) inherit it.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
)
# Many tests build the same tiny models: JAX's compilation cache, one folder
# per run shared by its workers and scripts, compiles each program once.
# (The first process to import this file names the folder: the controller,
# before it starts the xdist workers, which inherit the name.)
os.environ.setdefault("KERAS_INFFORMER_TEST_RUN", str(os.getpid()))
_JAX_CACHE = os.path.join(
    tempfile.gettempdir(),
    f"keras_infformer_tests_jax_cache_{os.environ['KERAS_INFFORMER_TEST_RUN']}",
)
if os.environ.get("KERAS_BACKEND") == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _JAX_CACHE
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

# tests/ mirrors the package folder by folder; the shared helpers
# (layer_test_case, model_test_case, repo_paths) live here, importable from any folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if keras.backend.backend() == "torch":
    import torch

    # The tests use tiny tensors: on a small, busy CPU, PyTorch's intra-op
    # thread pool costs ~100x more than the work (2 ms per tiny einsum).
    torch.set_num_threads(1)


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # The controller, last.
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """A clean Keras session, a seeded RNG and the float32 policy per test."""
    keras.utils.clear_session(free_memory=False)  # gc.collect() is slow
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(20240901)


@pytest.fixture
def mixed_bfloat16():
    """Run a test under the global "mixed_bfloat16" policy, always restored."""
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def to_numpy(x):
    """A NumPy copy of a tensor or Keras variable."""
    if isinstance(x, keras.Variable):
        x = x.value
    return np.array(keras.ops.convert_to_numpy(x))


@pytest.fixture(name="to_numpy")
def _to_numpy_fixture():
    return to_numpy


# -- independent NumPy references (float64) ------------------------------------


class Reference:
    """The maths of docs/theory.md §1-5 in NumPy float64."""

    @staticmethod
    def basis(num_basis, widths):
        """Centres (evenly over [0, 1], ends included) x every width."""
        k = len(widths)
        centers, out_widths = [], []
        for c in np.linspace(0.0, 1.0, num_basis // k):
            for w in widths:
                centers.append(c)
                out_widths.append(w)
        return np.array(centers), np.array(out_widths, dtype=np.float64)

    @staticmethod
    def normal_pdf(x, mean, var):
        x, mean, var = (np.asarray(a, dtype=np.float64) for a in (x, mean, var))
        return np.exp(-0.5 * (x - mean) ** 2 / var) / np.sqrt(2.0 * np.pi * var)

    @classmethod
    def rbf(cls, t, centers, widths):
        """psi_j(t), shape t.shape + (N,)."""
        t = np.asarray(t, dtype=np.float64)[..., None]
        return cls.normal_pdf(t, centers, np.asarray(widths) ** 2)

    @classmethod
    def expectation(cls, mu, sigma_sq, centers, widths):
        """r_j = N(mu; c_j, sigma^2 + w_j^2), shape mu.shape + (N,)."""
        mu = np.asarray(mu, dtype=np.float64)[..., None]
        sigma_sq = np.asarray(sigma_sq, dtype=np.float64)[..., None]
        return cls.normal_pdf(mu, centers, sigma_sq + np.asarray(widths) ** 2)

    @staticmethod
    def padding(num_positions):
        """Edge padding per basis.padding_positions' docstring: P // 2 cell
        midpoints over [-0.5, 0), the other P - P // 2 over (1, 1.5]."""
        n_left = num_positions // 2
        n_right = num_positions - n_left
        left = np.linspace(-0.5, 0.0, n_left + 1)
        right = np.linspace(1.0, 1.5, n_right + 1)
        return 0.5 * (left[1:] + left[:-1]), 0.5 * (right[1:] + right[:-1])

    @classmethod
    def ridge_fit(cls, positions, x, centers, widths, penalty, edge_padding):
        """Solve the normal equations (F F^T + lambda I) B = F X directly.

        With edge padding the positions are extended by the padding ones,
        where the targets are zero.
        """
        positions = np.asarray(positions, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if edge_padding:
            left, right = cls.padding(len(positions))
            positions = np.concatenate([left, positions, right])
            zeros = lambda n: np.zeros((n,) + x.shape[1:])  # noqa: E731
            x = np.concatenate([zeros(len(left)), x, zeros(len(right))])
        F = cls.rbf(positions, centers, widths).T  # (N, P)
        gram = F @ F.T + penalty * np.eye(F.shape[0])
        return np.linalg.solve(gram, F @ x)

    @classmethod
    def signal(cls, coefficients, t, centers, widths):
        """X(t) = B^T psi(t) for B of shape (N, e): shape (len(t), e)."""
        return cls.rbf(t, centers, widths) @ np.asarray(coefficients, np.float64)

    @staticmethod
    def normal_cdf(x):
        return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x) / math.sqrt(2.0)))

    @classmethod
    def sticky_histogram(cls, mu, sigma_sq, num_bins):
        """Per row: sum over the densities of Phi-differences per bin, then
        normalised. mu, sigma_sq: (batch, ...)."""
        mu = np.asarray(mu, np.float64).reshape(len(mu), -1, 1)
        sigma = np.sqrt(np.asarray(sigma_sq, np.float64)).reshape(len(mu), -1, 1)
        edges = np.linspace(0.0, 1.0, num_bins + 1)
        cdf = cls.normal_cdf((edges - mu) / sigma)
        mass = (cdf[..., 1:] - cdf[..., :-1]).sum(axis=1)
        return mass / mass.sum(axis=-1, keepdims=True)

    @staticmethod
    def piecewise_uniform_cdf(histogram, x):
        """CDF at x (shape (S,)) of the piecewise-uniform density of a
        histogram over equal bins of [0, 1]."""
        histogram = np.asarray(histogram, np.float64)
        d = len(histogram)
        cdf = np.concatenate([[0.0], np.cumsum(histogram)])
        x = np.clip(np.asarray(x, np.float64), 0.0, 1.0)
        k = np.minimum((x * d).astype(int), d - 1)
        return cdf[k] + histogram[k] * (x * d - k)

    @staticmethod
    def inverse_cdf(histogram, levels):
        """Inverse of the piecewise-uniform CDF, by bisection (float64)."""
        histogram = np.asarray(histogram, np.float64)
        out = []
        for u in np.asarray(levels, np.float64):
            lo, hi = 0.0, 1.0
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if Reference.piecewise_uniform_cdf(histogram, [mid])[0] < u:
                    lo = mid
                else:
                    hi = mid
            out.append(0.5 * (lo + hi))
        return np.array(out)

    @staticmethod
    def ks_distance(samples, cdf):
        """Kolmogorov-Smirnov distance of samples to a CDF (callable)."""
        x = np.sort(np.asarray(samples, np.float64))
        n = len(x)
        f = cdf(x)
        upper = np.arange(1, n + 1) / n - f
        lower = f - np.arange(n) / n
        return float(max(upper.max(), lower.max()))


@pytest.fixture
def ref():
    return Reference


# -- gradients on whichever backend runs ---------------------------------------


def compute_gradients(loss_fn, variables, inputs):
    """Gradients of `loss_fn(*inputs)` w.r.t. Keras `variables` and `inputs`.

    Args:
        loss_fn: callable of backend tensors returning a scalar tensor. It may
            read the variables (e.g. by calling a layer).
        variables: list of `keras.Variable`.
        inputs: list of NumPy arrays.

    Returns:
        (variable_gradients, input_gradients): lists of NumPy float64 arrays;
        a missing gradient (no path from the loss) is returned as zeros.
    """
    backend = keras.backend.backend()
    variables = list(variables)
    inputs = [np.asarray(x, dtype="float32") for x in inputs]
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(x) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = loss_fn(*tensors)
        grads = tape.gradient(loss, [v.value for v in variables] + tensors)
    elif backend == "jax":
        import jax

        def pure(var_values, input_values):
            mapping = list(zip(variables, var_values))
            with keras.StatelessScope(state_mapping=mapping):
                return loss_fn(*input_values)

        values = [v.value for v in variables]
        grads = jax.grad(pure, argnums=(0, 1))(values, [jax.numpy.asarray(x) for x in inputs])
        grads = list(grads[0]) + list(grads[1])
    elif backend == "torch":
        import torch

        tensors = [torch.tensor(x, requires_grad=True) for x in inputs]
        loss = loss_fn(*tensors)
        grads = torch.autograd.grad(loss, [v.value for v in variables] + tensors, allow_unused=True)
    else:
        raise NotImplementedError(backend)
    targets = [v.shape for v in variables] + [x.shape for x in inputs]
    out = []
    for g, shape in zip(grads, targets):
        out.append(np.zeros(shape) if g is None else to_numpy(g).astype(np.float64))
    return out[: len(variables)], out[len(variables) :]


@pytest.fixture
def gradients():
    return compute_gradients


@pytest.fixture
def jit_compile():
    """XLA on TensorFlow and JAX; eager on PyTorch."""
    return keras.backend.backend() in ("tensorflow", "jax")
