"""The memories' hyper-parameters, declared once.

Every class that takes the long-term memory's settings (the decoder block,
`ContinuousMemoryAttention`, the backbone, the LM and the pretrained memory
models) reads their names, defaults and checks from here: the class is
decorated with `keyword_settings(...)` (its signature then shows them as
keyword arguments with these defaults), its constructor takes them out of
`**kwargs` with `take`, sets them as attributes with `assign`, and writes
them into its config with `config`. A new setting is one entry below (and
its check in `check_long_term_memory`, and its use in the layer that
reads it).

The settings are documented in `InfiniteFormerDecoder`'s docstring.
"""

import inspect

from keras_infformer import utils

# The continuous long-term memory (ContinuousLTM, StickyMemorySampler,
# GaussianAttention): name -> default.
LONG_TERM_MEMORY = {
    "num_basis": 512,
    "basis_widths": None,
    "relative_basis_widths": (2.56, 12.8),
    "density_mode": "affine",
    "ridge_penalty": 1.0,
    "tau": 0.75,
    "num_samples": 512,
    "sticky_memories": False,
    "sticky_mode": "quantile",
    "num_bins": 128,
    "sticky_uniform_share": 0.5,
    "sigma_0": 0.05,
    "kl_weight": 1e-6,
}

# The paper's GPT-2 fine-tuning values (§5.2), the defaults of the
# pretrained memory models; `num_samples=None` means `num_basis`. The
# relative widths are the paper's (0.005, 0.01) at N = 512.
PRETRAINED_LONG_TERM_MEMORY = dict(
    LONG_TERM_MEMORY,
    relative_basis_widths=(1.28, 2.56),
    ridge_penalty=0.5,
    tau=0.5,
    num_samples=None,
    sticky_memories=True,
)

# The Compressive Transformer memory of the decoder block (a baseline).
COMPRESSIVE_MEMORY = {
    "compressed_memory_length": 0,
    "compression_rate": 4,
    "reconstruction_weight": 1.0,
}


def take(kwargs, declaration):
    """The settings of `declaration` taken out of a constructor's `kwargs`:
    each given value, else its declared default, in declaration order."""
    return {name: kwargs.pop(name, default) for name, default in declaration.items()}


def keyword_settings(*declarations):
    """A class decorator: the constructor's signature lists the settings of
    `declarations` as keyword-only arguments with their defaults.

    The constructor itself takes them from `**kwargs` (`take`); this makes
    `help()`, `inspect.signature` and Keras' argument binding see them as
    if written out.
    """

    def decorate(cls):
        init = cls.__init__
        signature = inspect.signature(init)
        parameters = list(signature.parameters.values())
        rest = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
        var_keyword = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
        settings = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for declaration in declarations
            for name, default in declaration.items()
        ]
        init.__signature__ = signature.replace(parameters=rest + settings + var_keyword)
        return cls

    return decorate


def collect(values, names):
    """The settings `names` picked from `values` (e.g. a constructor's
    `locals()`), in declaration order."""
    return {name: values[name] for name in names}


def check_long_term_memory(settings):
    """The long-term memory's settings checked and normalised (a new dict).

    Raises a ValueError or TypeError naming the first bad value; the
    sticky mode is checked only when `sticky_memories` is on.
    """
    from keras_infformer.layers.continuous_ltm import ContinuousLTM
    from keras_infformer.layers.gaussian_attention import check_density_mode
    from keras_infformer.layers.sticky_memory_sampler import StickyMemorySampler

    checked = dict(settings)
    (
        checked["num_basis"],
        checked["basis_widths"],
        checked["ridge_penalty"],
        checked["tau"],
        checked["num_samples"],
    ) = ContinuousLTM.check_arguments(
        *(
            settings[k]
            for k in (
                "num_basis",
                "basis_widths",
                "ridge_penalty",
                "tau",
                "num_samples",
                "relative_basis_widths",
            )
        )
    )
    checked["relative_basis_widths"] = tuple(float(w) for w in settings["relative_basis_widths"])
    checked["density_mode"] = check_density_mode(settings["density_mode"])
    checked["sticky_memories"] = bool(settings["sticky_memories"])
    checked["num_bins"] = utils.check_positive_int(settings["num_bins"], "num_bins")
    if checked["sticky_memories"]:
        StickyMemorySampler.check_arguments(
            checked["num_samples"], checked["num_bins"], settings["sticky_mode"]
        )
    checked["sticky_uniform_share"] = utils.check_range(
        settings["sticky_uniform_share"],
        "sticky_uniform_share",
        0.0,
        1.0,
        low_open=False,
        high_open=False,
    )
    checked["sigma_0"] = utils.check_range(settings["sigma_0"], "sigma_0", 0.0, float("inf"))
    checked["kl_weight"] = utils.check_range(
        settings["kl_weight"], "kl_weight", 0.0, float("inf"), low_open=False
    )
    return checked


def check_compressive_memory(settings):
    """The compressed memory's settings checked (a new dict)."""
    checked = dict(settings)
    checked["compressed_memory_length"] = int(settings["compressed_memory_length"])
    if checked["compressed_memory_length"] > 0:
        checked["compression_rate"] = utils.check_positive_int(
            settings["compression_rate"], "compression_rate"
        )
    checked["reconstruction_weight"] = utils.check_range(
        settings["reconstruction_weight"],
        "reconstruction_weight",
        0.0,
        float("inf"),
        low_open=False,
    )
    return checked


def assign(layer, settings):
    """Set every setting as an attribute of `layer`, under its own name."""
    for name, value in settings.items():
        setattr(layer, name, value)


def config(layer, names):
    """`{name: getattr(layer, name)}` for the config of `layer`."""
    return {name: getattr(layer, name) for name in names}


def forward_attributes(owner, names):
    """A class decorator: `names` read as `getattr(self.<owner>, name)`.

    For a task model whose settings are its backbone's.
    """

    def decorate(cls):
        for name in names:
            setattr(
                cls,
                name,
                property(
                    lambda self, name=name: getattr(getattr(self, owner), name),
                    doc=f"The {owner}'s `{name}`.",
                ),
            )
        return cls

    return decorate
