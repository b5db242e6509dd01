"""One continuous long-term memory: what it stores, where it reads, how it
is attended."""

import keras
from keras import ops

from keras_infformer import memory
from keras_infformer.layers.continuous_ltm import ContinuousLTM
from keras_infformer.layers.gaussian_attention import GaussianAttention
from keras_infformer.layers.sticky_memory_sampler import StickyMemorySampler

# The names of the decode view in a state (`LongTermMemory.view_spec`). The
# first holds `memory_view()`'s keys of either density mode; its name stays
# what exported servables already carry.
VIEW_NAMES = ("ltm_weighted_keys", "ltm_values")


class LongTermMemory:
    """The ∞-former's long-term memory, composed once for every layer that
    has one (`InfiniteFormerDecoder`, `ContinuousMemoryAttention`).

    It composes a `ContinuousLTM` (the basis coefficients and their ridge
    update), with sticky memories a `StickyMemorySampler` (where the old
    signal is read) and a `GaussianAttention` (how it is read), and offers
    what a layer does with them: `state_spec` / `initial_state` (the state
    entries `ltm_*`, and the sticky histogram under the owner's name),
    `absorb` (vectors enter the memory), `read` (attend to it, with or
    without the KL regulariser), the decode view (`view_spec` / `view`,
    the memory's keys and values computed once per segment), and the
    sticky masses of a read (`bin_mass`, `histogram`).

    It is not a Keras layer: the owner tracks the three sublayers under its
    own attribute names (`ltm`, `sampler`, `attention` here), so that saved
    files, variable paths and the order of the weights are those of a
    layer that made them itself. The owner makes the attention with
    `make_attention` where its weights were always made and builds both
    with `build`.

    Args:
        settings: dict. The checked long-term memory settings
            (`memory_settings.check_long_term_memory`).
        seed: int. The owner's seed; the random sampler's follows from it.
        dtype: the owner's dtype policy.
        density_name: str. The state name of the sticky histogram.
    """

    def __init__(self, settings, seed, dtype, density_name):
        self.settings = settings
        self.density_name = density_name
        self.num_basis = settings["num_basis"]
        self._dtype = dtype
        self.ltm = ContinuousLTM(
            num_basis=settings["num_basis"],
            basis_widths=settings["basis_widths"],
            ridge_penalty=settings["ridge_penalty"],
            tau=settings["tau"],
            num_samples=settings["num_samples"],
            stateful=False,
            dtype=dtype,
            name="long_term_memory",
        )
        self.sampler = None
        if settings["sticky_memories"]:
            self.sampler = StickyMemorySampler(
                num_samples=settings["num_samples"],
                num_bins=settings["num_bins"],
                mode=settings["sticky_mode"],
                uniform_share=settings["sticky_uniform_share"],
                seed=(seed + 7) % (2**31 - 1),
                dtype=dtype,
                name="sticky_memory_sampler",
            )
        self.attention = None

    def make_attention(
        self,
        name,
        key_dim,
        num_heads,
        output_dim,
        project_query,
        zero_output,
        kernel_initializer,
    ):
        """The Gaussian attention over this memory (built by `build`)."""
        self.attention = GaussianAttention(
            num_heads=num_heads,
            key_dim=key_dim,
            output_dim=output_dim,
            basis_widths=self.settings["basis_widths"],
            density_mode=self.settings["density_mode"],
            sigma_0=self.settings["sigma_0"],
            kl_weight=self.settings["kl_weight"],
            project_query=project_query,
            zero_output=zero_output,
            kernel_initializer=kernel_initializer,
            dtype=self._dtype,
            name=name,
        )
        return self.attention

    def build(self, inputs_shape, query_shape):
        """Build for absorbed vectors `(B, L, e)` and queries of `query_shape`."""
        self.ltm.build(tuple(inputs_shape))
        self.attention.build(
            tuple(query_shape), (inputs_shape[0], self.num_basis, inputs_shape[-1])
        )

    # -- state ---------------------------------------------------------------

    def state_spec(self, batch_size=None):
        """The memory's state: `ltm_coefficients`, `ltm_filled`, `ltm_max_abs`."""
        return {
            memory.state_name("ltm", name): tensor
            for name, tensor in self.ltm.state_spec(batch_size).items()
        }

    def density_spec(self, batch_size=None):
        """With sticky memories, the histogram of the last read
        (`density_name`); else empty."""
        if self.sampler is None:
            return {}
        return {
            self.density_name: keras.KerasTensor(
                (batch_size, self.sampler.num_bins), dtype="float32"
            )
        }

    def initial_density(self, state, batch_size):
        """`state` with the flat histogram, the density before any read."""
        if self.density_name in state:
            state[self.density_name] = self.sampler.uniform_histogram(batch_size)
        return state

    def view_spec(self, batch_size=None):
        """The decode view of `view()`, by `VIEW_NAMES`."""
        shapes = self.attention.memory_view_shapes(batch_size)
        return {
            name: keras.KerasTensor(shape, dtype="float32")
            for name, shape in zip(VIEW_NAMES, shapes)
        }

    # -- absorbing and reading ------------------------------------------------

    def absorb(self, vectors, state, absorb=None, histogram=None):
        """The `ltm_*` entries after `vectors` `(B, L, e)` enter the memory.

        `state` holds (at least) the `ltm_*` entries; rows not flagged in
        `absorb` keep theirs. With sticky memories the old signal is read
        at points drawn from `histogram`.
        """
        names = {name: memory.state_name("ltm", name) for name in self.ltm.state_spec()}
        points = None if histogram is None else self.sampler.sample(histogram)
        _, new = self.ltm.step(
            vectors,
            {key: state[name] for key, name in names.items()},
            sample_points=points,
            absorb=absorb,
        )
        return {names[key]: value for key, value in new.items()}

    @staticmethod
    def coefficients(state):
        return state[memory.state_name("ltm", "coefficients")]

    def read(self, query, state, regularize=True, view=None):
        """`(outputs, mu, sigma_sq)`: `query` attending to the memory of
        `state` as it stands (nothing is absorbed).

        `regularize=False` adds no KL loss (inference paths such as
        token-by-token decoding) and may read a decode `view`.
        """
        coefficients = ops.cast(self.coefficients(state), "float32")
        if regularize:
            return self.attention(query, coefficients, return_density=True)
        return self.attention.read(query, coefficients, view=view)

    def view(self, state):
        """The memory's keys and values of `state`, float32, by `VIEW_NAMES`."""
        view = self.attention.memory_view(self.coefficients(state))
        return dict(zip(VIEW_NAMES, (ops.cast(v, "float32") for v in view)))

    # -- sticky densities --------------------------------------------------------

    def bin_mass(self, mu, sigma_sq):
        """The attention mass per histogram bin of a read (summable)."""
        return self.sampler.bin_mass(mu, sigma_sq)

    def histogram(self, mass):
        """The sticky histogram of summed `bin_mass`es (no gradient)."""
        return ops.stop_gradient(self.sampler.normalize_mass(mass))
