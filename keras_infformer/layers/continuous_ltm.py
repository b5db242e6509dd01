import keras
import numpy as np
from keras import ops

from keras_infformer import basis, memory, utils

# Reads of the old signal are clipped to this multiple of the largest |value|
# the row has absorbed (`max_abs` in the state).
READ_BOUND = 2.0


@keras.saving.register_keras_serializable(package="keras_infformer")
class ContinuousLTM(memory.MemoryLayer):
    """Continuous long-term memory of unbounded length at a fixed size.

    The memory holds the past as a continuous signal `X̄(t) = Bᵀ ψ(t)`,
    `t ∈ [0, 1]`, written with `num_basis` Gaussian radial basis functions.
    Each call absorbs `L` new vectors: the old signal is read at
    `num_samples` points, squeezed into [0, `tau`], the new vectors are placed
    evenly over (`tau`, 1], and the coefficients `B` are refitted by ridge
    regression over the `num_samples + L` points. An empty row is fitted on
    the new vectors alone, at evenly spaced positions. The ridge matrices are
    constants computed once in float64; only where the old signal is read can
    depend on the data (sticky memories). The cost of an update is
    `O((num_samples + L) · num_basis · e)` whatever has been absorbed.

    The old signal is read back clipped to `[-2a, 2a]`, where `a` is the
    largest |value| the row has absorbed since its reset (kept in the
    state), which bounds the memory over streams of any length. Uniform reads
    are stable without it, but sticky reads can park a point of the signal
    where the fit overshoots (next to the old/new junction or an edge) and
    re-read it at every update: a growth of a few % per update that
    compounds over a long stream. The margin of 2 leaves the ripple of an
    honest fit untouched (a constant keeps its level).

    With `stateful=True` the coefficients live in a non-trainable variable of
    shape `(batch_size, num_basis, e)` (float32 whatever the dtype policy) and
    every call updates it, like a stateful Keras RNN: the batch size must be
    static and the same at every call. Passing `state=` instead uses the
    explicit-state path: `(inputs, state) -> (coefficients, new_state)`, no
    variable touched, any batch size.

    Args:
        num_basis: int. Number of basis functions `N`, a multiple of
            `len(basis_widths)`.
        basis_widths: tuple of floats or `None`. Widths of the basis
            functions on [0, 1]; each centre is paired with every width.
            `None` (default) scales `relative_basis_widths` with `num_basis`.
        relative_basis_widths: tuple of floats. The widths in units of
            `1 / C`, `C = num_basis / len(relative_basis_widths)` centres per
            width (about one centre spacing), used when `basis_widths` is
            `None`. Defaults to `(2.56, 12.8)`: the paper's `(0.01, 0.05)` at
            `num_basis=512`, `(0.16, 0.8)` at 32 (docs/theory.md §6a).
        ridge_penalty: float. Ridge penalty `λ > 0` of the fit. Defaults to
            `1.0`.
        tau: float in (0, 1). Share of [0, 1] given to the old signal at an
            update. Defaults to `0.75`.
        num_samples: int. Number of points `M` at which the old signal is
            read at an update. Defaults to `512`.
        edge_padding: bool. Fit with zero-signal padding beyond both ends of
            [0, 1] (the reference code's edge trick). Measured here it pulls
            the fit towards zero at the ends (6.6 % relative L2 error on a
            smooth signal vs 0.3 % without) and leaves dips where the old
            signal's end is squeezed, so it is off by default.
            Defaults to `False`.
        stateful: bool. Keep the memory in variables (see above). Defaults
            to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: tensor of shape `(batch_size, L, e)`. The vectors to absorb.
        sample_points: optional tensor of shape `(batch_size, num_samples)`
            with sorted points in [0, 1] where the old signal is read (from a
            `StickyMemorySampler`). Defaults to the uniform points `m / M`.
        reset: optional tensor of shape `(batch_size,)`, bools or 0/1. Rows
            flagged are emptied before absorbing (a new document starts).
        absorb: optional bool tensor of shape `(batch_size,)`: the rows that
            absorb `inputs`; the others keep their memory (after `reset`)
            and return it. Defaults to every row.
        state: optional dict with `"coefficients"` `(batch_size, N, e)`,
            `"filled"` `(batch_size,)` (whether the row holds a past) and
            `"max_abs"` `(batch_size,)` (the largest |value| absorbed, the
            bound on reads), as made by `get_initial_state()`. When given,
            the explicit-state path runs and `(coefficients, new_state)` is
            returned.

    Returns:
        The new coefficients `B`, float32 of shape `(batch_size, N, e)`, and
        the new state when `state` was given. The gradient reaches `inputs`
        but never the stored past.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    ltm = keras_infformer.layers.ContinuousLTM(num_basis=64, num_samples=64)
    for _ in range(10):  # Ten segments of 32 vectors of width 8.
        coefficients = ltm(np.random.rand(2, 32, 8).astype("float32"))
    signal = ltm.reconstruct(coefficients, np.linspace(0, 1, 100))
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    def __init__(
        self,
        num_basis,
        basis_widths=None,
        relative_basis_widths=basis.RELATIVE_BASIS_WIDTHS,
        ridge_penalty=1.0,
        tau=0.75,
        num_samples=512,
        edge_padding=False,
        stateful=True,
        **kwargs,
    ):
        super().__init__(stateful=stateful, **kwargs)
        (
            self.num_basis,
            self.basis_widths,
            self.ridge_penalty,
            self.tau,
            self.num_samples,
        ) = self.check_arguments(
            num_basis, basis_widths, ridge_penalty, tau, num_samples, relative_basis_widths
        )
        self.relative_basis_widths = basis.check_widths(
            relative_basis_widths, "relative_basis_widths"
        )
        self.edge_padding = bool(edge_padding)
        centers, widths = basis.basis_parameters(self.num_basis, self.basis_widths)
        self._centers_np = centers
        self._widths_np = widths
        self.centers = utils.constant(centers)
        self.widths = utils.constant(widths)
        self._rbf_scale, self._rbf_log_norm = (
            utils.constant(c) for c in basis.rbf_constants(centers, widths)
        )
        self._ridge_cache = {}
        self.memory_dim = None

    @staticmethod
    def check_arguments(
        num_basis,
        basis_widths,
        ridge_penalty,
        tau,
        num_samples,
        relative_basis_widths=basis.RELATIVE_BASIS_WIDTHS,
    ):
        """The hyper-parameters checked and normalised (raises on bad ones);
        `basis_widths` comes back resolved (`basis.resolve_basis_widths`).

        Also used by layers that create a ContinuousLTM in `build()`, so that
        bad settings fail at their construction.
        """
        num_basis = utils.check_positive_int(num_basis, "num_basis")
        basis_widths = basis.resolve_basis_widths(num_basis, basis_widths, relative_basis_widths)
        ridge_penalty = utils.check_range(ridge_penalty, "ridge_penalty", 0.0, np.inf)
        tau = utils.check_range(tau, "tau", 0.0, 1.0)
        num_samples = utils.check_positive_int(num_samples, "num_samples")
        return num_basis, basis_widths, ridge_penalty, tau, num_samples

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                "`inputs` of ContinuousLTM must have shape (batch_size, L, e). "
                f"Received: input_shape={input_shape}"
            )
        self.memory_dim = input_shape[-1]
        if self.memory_dim is None:
            raise ValueError(
                "The feature dimension of `inputs` must be static. "
                f"Received: input_shape={input_shape}"
            )
        if input_shape[1] is not None:
            self._ridge_matrices(int(input_shape[1]))
        super().build(input_shape)

    # -- constants ---------------------------------------------------------

    def _ridge_matrices(self, length):
        """(G_empty (L, N), G_update (M + L, N), ψ at uniform reads (M, N))."""
        if length not in self._ridge_cache:
            centers, widths = self._centers_np, self._widths_np
            g_empty = basis.ridge_matrix(
                basis.uniform_positions(length),
                centers,
                widths,
                self.ridge_penalty,
                self.edge_padding,
            )
            g_update = basis.ridge_matrix(
                basis.update_positions(self.num_samples, length, self.tau),
                centers,
                widths,
                self.ridge_penalty,
                self.edge_padding,
            )
            psi_uniform = basis.design_matrix(
                basis.uniform_sample_points(self.num_samples), centers, widths
            ).T
            self._check_stable(g_update, psi_uniform, length)
            self._ridge_cache[length] = tuple(
                utils.constant(m) for m in (g_empty, g_update, psi_uniform)
            )
        return self._ridge_cache[length]

    def _check_stable(self, g_update, psi_uniform, length):
        """Refuse settings whose update map amplifies the old memory.

        An update maps the old coefficients linearly, `B ↦ A B + (new)`, with
        `A = G_oldᵀ Ψ_read`; if the spectral radius of `A` reaches 1, errors
        grow at every update and the memory diverges (e.g. `num_samples`
        much smaller than `num_basis`).
        """
        a = g_update[: self.num_samples].T @ psi_uniform
        radius = float(np.max(np.abs(np.linalg.eigvals(a))))
        if not radius < 1.0:
            raise ValueError(
                "These memory settings are unstable: each update multiplies "
                f"the old memory by a map of spectral radius {radius:.3f} >= 1, "
                "so it diverges over a long stream. Increase `num_samples` "
                "(at least `num_basis` is safe) or `ridge_penalty`. Received: "
                f"num_basis={self.num_basis}, num_samples={self.num_samples}, "
                f"input length={length}, tau={self.tau}, "
                f"ridge_penalty={self.ridge_penalty}, "
                f"basis_widths={self.basis_widths}"
            )

    # -- state -------------------------------------------------------------

    def state_spec(self, batch_size=None):
        """The memory of a row: the coefficients `B`, whether the row holds a
        past, and the largest |value| it has absorbed (the bound on reads)."""
        return {
            "coefficients": keras.KerasTensor(
                (batch_size, self.num_basis, self.memory_dim), dtype="float32"
            ),
            "filled": keras.KerasTensor((batch_size,), dtype="float32"),
            "max_abs": keras.KerasTensor((batch_size,), dtype="float32"),
        }

    # -- forward -----------------------------------------------------------

    def validate_inputs(self, inputs, sample_points=None, absorb=None):
        utils.check_rank(inputs, 3, "inputs")
        if inputs.shape[-1] != self.memory_dim:
            raise ValueError(
                f"`inputs` of layer '{self.name}' must have feature dimension "
                f"{self.memory_dim}. Received: inputs.shape={tuple(inputs.shape)}"
            )
        if inputs.shape[1] is None:
            raise ValueError(
                "The length of `inputs` (axis 1) must be static. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        batch = inputs.shape[0]
        if sample_points is not None:
            shape = tuple(sample_points.shape)
            if (
                len(shape) != 2
                or shape[1] != self.num_samples
                or (batch is not None and shape[0] is not None and shape[0] != batch)
            ):
                raise ValueError(
                    "`sample_points` must have shape "
                    f"({batch}, {self.num_samples}). Received: "
                    f"sample_points.shape={shape}"
                )
            points = utils.concrete_value(sample_points)
            if points is not None and (
                not np.all(np.isfinite(points)) or points.min() < 0.0 or points.max() > 1.0
            ):
                raise ValueError(
                    "`sample_points` must lie in [0, 1]. Received values in "
                    f"[{np.nanmin(points)}, {np.nanmax(points)}]"
                )
        if absorb is not None and tuple(absorb.shape) not in ((batch,), (None,)):
            raise ValueError(
                f"`absorb` must have shape ({batch},). Received: absorb.shape={tuple(absorb.shape)}"
            )

    def step(self, inputs, state, reset=None, sample_points=None, absorb=None):
        """The pure update: `(inputs, state) -> (coefficients, new_state)`."""
        length = int(inputs.shape[1])
        g_empty, g_update, psi_uniform = self._ridge_matrices(length)
        x = ops.cast(inputs, "float32")
        state = self.read_state(state, reset)
        old, filled, max_abs = state["coefficients"], state["filled"], state["max_abs"]
        # Read the old signal at M points: X_old[m] = B_oldᵀ ψ(t_m).
        if sample_points is None:
            x_old = ops.einsum("mn,bne->bme", psi_uniform, old)
        else:
            points = ops.stop_gradient(ops.cast(sample_points, "float32"))
            psi = basis.rbf_from_constants(
                points, self.centers, self._rbf_scale, self._rbf_log_norm
            )
            x_old = ops.einsum("bmn,bne->bme", psi, old)
        bound = READ_BOUND * ops.reshape(max_abs, (-1, 1, 1))
        x_old = ops.minimum(ops.maximum(x_old, -bound), bound)
        # A filled row is refitted on [X_old; X] with G_update, an empty one
        # on X alone with G_empty. Split G_update into its rows of the old
        # samples and of the new vectors: the new vectors of every row then
        # go through one matmul with the row's own matrix (G_update's new
        # rows or G_empty, selected per row), instead of fitting every row
        # both ways and keeping one.
        is_filled = ops.reshape(filled, (-1, 1, 1)) > 0.5
        num_samples = self.num_samples
        g_new = ops.where(is_filled, g_update[num_samples:], g_empty)  # (B, L, N)
        fit_new = ops.einsum("bpn,bpe->bne", g_new, x)
        fit_old = ops.einsum("pn,bpe->bne", g_update[:num_samples], x_old)
        coefficients = fit_new + ops.where(is_filled, fit_old, 0.0)
        new_state = {
            "coefficients": coefficients,
            "filled": ops.ones_like(filled),
            "max_abs": ops.maximum(
                ops.where(filled > 0.5, max_abs, 0.0),
                ops.stop_gradient(ops.max(ops.abs(x), axis=(1, 2))),
            ),
        }
        if absorb is not None:
            absorbs = ops.cast(absorb, "bool")
            coefficients = memory.select_rows(absorbs, coefficients, old)
            new_state = {k: memory.select_rows(absorbs, v, state[k]) for k, v in new_state.items()}
        new_state["coefficients"] = ops.stop_gradient(coefficients)
        return coefficients, new_state

    def absorb(self, inputs, state, sample_points=None, reset=None):
        """`step` under its former name (and argument order)."""
        return self.step(inputs, state, reset=reset, sample_points=sample_points)

    def compute_step_output_spec(self, inputs, sample_points=None, absorb=None):
        return keras.KerasTensor(
            (inputs.shape[0], self.num_basis, inputs.shape[-1]), dtype="float32"
        )

    def read(self, state=None):
        """The coefficients `B` as they stand, without absorbing anything.

        A read that does not write: what a position may attend to before its
        own segment is absorbed (read the past, attend, then call the layer
        to absorb). With `state` (explicit-state path) its coefficients;
        otherwise a copy of the stored memory, `(batch_size, N, e)`, zeros
        for empty rows.
        """
        if state is not None:
            return ops.cast(state["coefficients"], "float32")
        self._require_stateful()
        return ops.copy(self.coefficients.value)

    def reconstruct(self, coefficients, t):
        """The signal `X̄(t) = Bᵀ ψ(t)`, shape `(batch_size, len(t), e)`.

        Args:
            coefficients: tensor of shape `(batch_size, N, e)`.
            t: positions, shape `(T,)` (shared by rows) or
                `(batch_size, T)`.
        """
        t = ops.cast(ops.convert_to_tensor(t), "float32")
        psi = basis.rbf(t, self.centers, self.widths)
        coefficients = ops.cast(coefficients, "float32")
        if len(psi.shape) == 2:
            return ops.einsum("tn,bne->bte", psi, coefficients)
        return ops.einsum("btn,bne->bte", psi, coefficients)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_basis": self.num_basis,
                "basis_widths": self.basis_widths,
                "relative_basis_widths": self.relative_basis_widths,
                "ridge_penalty": self.ridge_penalty,
                "tau": self.tau,
                "num_samples": self.num_samples,
                "edge_padding": self.edge_padding,
            }
        )
        return config
