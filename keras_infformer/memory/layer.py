"""The `MemoryLayer` base, and memory resets by model.

Every stateful layer of the package is a `MemoryLayer`: a pure step
`(inputs, state) -> (outputs, new_state)` (the "cell") wrapped by a base that
keeps the state in variables between calls (like Keras' stateful RNN around
its cell). The base owns the plumbing; a subclass declares its state and its
step.
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_infformer import compat, utils
from keras_infformer.distribution import topology
from keras_infformer.memory import storage
from keras_infformer.memory.registry import DECLARED_STATES
from keras_infformer.memory.state import (
    check_float_dtype,
    check_reset,
    check_state,
    check_state_keys,
    select_rows,
)

# -- the base layer ----------------------------------------------------------------


class MemoryLayer(keras.layers.Layer):
    """Base class of layers that carry a memory from call to call.

    A subclass declares its memory and one pure step; the base does the
    rest, as Keras' stateful RNN does around its cell:

    - `state_spec(batch_size=None)`: dict `name -> keras.KerasTensor` of the
      shapes of the state (float32). Called after the subclass's `build()`
      has set its sizes.
    - `step(inputs, state, reset=None, **kwargs) -> (outputs, new_state)`:
      the pure update. `outputs` may be any structure (a tensor, a tuple);
      no variable may be read for memory or assigned. Start it with
      `state = self.read_state(state, reset)`, which also empties the rows
      flagged in `reset`.
    - optionally `get_initial_state(batch_size)`, when the empty memory is
      not all zeros; `validate_inputs(inputs, **kwargs)` for checks of its
      own; `compute_step_output_spec(inputs, **kwargs)` (else `call` is
      traced symbolically); and a `build()` that sets its sizes and ends with
      `super().build(input_shape)`.

    The base then provides: the float32 non-trainable memory variables
    (created in `build` when `stateful=True`, per row, per replica under
    `tf.distribute`, batch-sharded under `keras_infformer.distribution`);
    `call(inputs, reset=None, state=None, training=None, **kwargs)`, which
    validates everything before touching memory, then either runs the
    explicit-state path (`state=` given: returns `(outputs, new_state)`, no
    variable touched, any batch size) or reads the variables (a copy, so
    PyTorch's autograd sees no in-place change), steps, and assigns the new
    state (returns `outputs`); `reset_state()`, `get_state()`,
    `set_state()` (all-or-nothing); and saving of every row of memory.
    Memory stays float32 on every path under mixed precision: the layer's
    call arguments are not autocast (`input_dtype` is float32), so a step
    casts what it computes in the compute dtype itself.

    Reset rows: a row flagged in `reset` behaves exactly as an empty memory,
    whatever it held (even NaN), because its state is *selected* from
    `get_initial_state()`. Flags are bools or 0/1 numbers, anything else is
    refused when concrete.

    Each memory variable is also an attribute of the layer under its state
    name (e.g. `layer.coefficients`) when that name is free.

    Args:
        stateful: bool. Keep the memory in variables (static batch size).
            Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: the step's inputs (a tensor whose first axis is the batch).
        reset: optional tensor `(batch_size,)` of bools (or 0/1): rows that
            start a new document, emptied before the step.
        state: optional dict of tensors as from `get_initial_state()`;
            selects the explicit-state path.
        training: bool, passed on to `step` when it takes it.
        **kwargs: other arguments of the subclass's `step`.

    Examples:

    ```python
    import keras
    from keras import ops
    from keras_infformer.memory import MemoryLayer

    class RunningSum(MemoryLayer):
        def build(self, input_shape):
            self.units = input_shape[-1]
            super().build(input_shape)

        def state_spec(self, batch_size=None):
            return {"total": keras.KerasTensor((batch_size, self.units))}

        def step(self, inputs, state, reset=None):
            state = self.read_state(state, reset)
            total = state["total"] + ops.sum(inputs, axis=1)
            return total, {"total": total}

    layer = RunningSum()
    layer(ops.ones((2, 3, 4)))  # Totals 3.
    total = layer(ops.ones((2, 3, 4)), reset=[True, False])  # 3 and 6.
    state = layer.get_initial_state(5)  # The explicit path, any batch:
    total, state = layer(ops.ones((5, 3, 4)), state=state)
    ```
    """

    def __init__(self, stateful=True, **kwargs):
        super().__init__(**kwargs)
        self.stateful = bool(stateful)
        self.batch_size = None
        # Rows of memory held here: the batch size, or its per-replica part
        # under a tf.distribute strategy.
        self._memory_rows = None
        self._state_variables = {}
        topology.remember_multi_worker_strategy()
        self._step_takes_training = "training" in inspect.signature(self.step).parameters

    # -- what a subclass declares ---------------------------------------------

    def state_spec(self, batch_size=None):
        """Names, shapes and dtypes (float32) of the memory state."""
        raise NotImplementedError(f"{type(self).__name__} must implement `state_spec(batch_size)`.")

    def step(self, inputs, state, reset=None, **kwargs):
        """The pure step: `(inputs, state) -> (outputs, new_state)`."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `step(inputs, state, reset)`."
        )

    def get_initial_state(self, batch_size):
        """The empty memory for `batch_size` rows (explicit-state path)."""
        # The spec without a batch size: `batch_size` may be a traced tensor.
        return {
            name: ops.zeros((batch_size,) + tuple(spec.shape[1:]), dtype="float32")
            for name, spec in self.state_spec().items()
        }

    def validate_inputs(self, inputs, **kwargs):
        """Checks of the subclass on `inputs` and its own step arguments."""

    def compute_step_output_spec(self, inputs, **kwargs):
        """The spec of `step`'s outputs, or `None` (default): trace `call`."""
        return None

    # -- what the base provides --------------------------------------------------

    @property
    def input_dtype(self):
        # No call argument is autocast: the explicit `state` must stay
        # float32 under mixed precision. A step casts to the compute dtype
        # what it computes in.
        return "float32"

    def build(self, input_shape):
        """Create the memory variables (subclasses call it last)."""
        if self.stateful:
            batch_size = input_shape[0] if input_shape else None
            if batch_size is None:
                raise ValueError(
                    f"A stateful {type(self).__name__} needs a static batch "
                    "size. Pass `batch_size=` to `keras.Input` (or build with "
                    "a concrete batch), or use `stateful=False` with `state=`. "
                    f"Received: input_shape={input_shape}"
                )
            self.batch_size = int(batch_size)
            # Under a tf.distribute strategy each replica keeps the memory of
            # its own rows only (see keras_infformer.distribution).
            self._memory_rows = topology.per_replica_batch(self.batch_size, self)
            spec = self.state_spec(self._memory_rows)
            for name, tensor in spec.items():
                if keras.backend.standardize_dtype(tensor.dtype) != "float32":
                    raise ValueError(
                        f"Memory state is float32 (under mixed precision too). "
                        f"Received: state_spec()['{name}'].dtype={tensor.dtype} "
                        f"in layer '{self.name}'"
                    )
            # The layout rules of keras_infformer.distribution find memory
            # variables by these names.
            DECLARED_STATES.register(spec, self)
            for name, tensor in spec.items():
                variable = storage.add_memory_variable(self, tensor.shape, name)
                self._state_variables[name] = variable
                if name not in self.__dict__ and not hasattr(type(self), name):
                    setattr(self, name, variable)
            self.reset_state()
        self.built = True

    def read_state(self, state, reset=None):
        """`state` (all or some keys) ready for a step.

        Float32 and without gradient (nothing flows into the stored past),
        with the rows flagged in `reset` replaced by the empty state.
        """
        state = {k: ops.stop_gradient(ops.cast(v, "float32")) for k, v in state.items()}
        if reset is None or not state:
            return state
        reset = ops.cast(reset, "bool")
        # One empty row, broadcast by the selection to every reset row.
        initial = self.get_initial_state(1)
        return {k: select_rows(reset, initial[k], v) for k, v in state.items()}

    def reset_state(self):
        """Empty the stored memory of every row."""
        if not self._state_variables:
            return
        for name, value in self.get_initial_state(self._memory_rows).items():
            self._state_variables[name].assign(value)

    def get_state(self):
        """The stored memory as a dict of tensors (copies, every row)."""
        self._require_stateful()
        return {
            name: storage.read_memory(variable) for name, variable in self._state_variables.items()
        }

    def set_state(self, state):
        """Write a state dict (every row) into the memory variables.

        Everything is checked first (keys, shapes, finite values); then all
        is written, or nothing when a check fails.
        """
        self._assign_state(self._checked_state(state))

    def _checked_state(self, state, what="state"):
        """`state` validated for `set_state`, as float32 NumPy arrays."""
        self._require_stateful()
        spec = self.state_spec(self.batch_size)
        check_state(state, spec, what, float_only=True)
        return {
            name: np.asarray(ops.convert_to_numpy(state[name]), dtype="float32") for name in spec
        }

    def _assign_state(self, values):
        for name, value in values.items():
            # Every row, also into per-replica (tf.distribute) variables.
            storage.assign_memory(self._state_variables[name], value)

    def save_own_variables(self, store):
        # Every row of the memory, also from per-replica (tf.distribute) variables.
        storage.save_own_variables(self, store)

    def load_own_variables(self, store):
        storage.load_own_variables(self, store)

    def _require_stateful(self):
        if not self._state_variables:
            raise ValueError(
                f"Layer '{self.name}' keeps no memory variables "
                f"(stateful={self.stateful}, built={self.built}). Pass "
                "`state=` to use the explicit-state path."
            )

    def _validate_call(self, inputs, reset, state, kwargs):
        """Every check of a call, before any memory is read or written."""
        self.validate_inputs(inputs, **kwargs)
        batch = _batch_dim(inputs)
        if state is None:
            self._require_stateful()
            # An unknown batch size (a traced TF graph fed by a dataset) is
            # accepted, as in Keras' stateful RNN; a known one must match.
            # Inside a tf.distribute replica it is the per-replica batch.
            if batch is not None and batch not in (self.batch_size, self._memory_rows):
                raise ValueError(
                    f"Layer '{self.name}' is stateful and was built for batch "
                    f"size {self.batch_size}. Received: inputs.shape="
                    f"{_shape_of(inputs)}. Use data of that batch size (no "
                    "partial batches), rebuild the layer, or use the "
                    "explicit-state path (`state=`)."
                )
        reset = check_reset(reset, batch)
        if state is not None:
            check_state(state, self.state_spec(batch), "state", reset)
        for x in keras.tree.flatten(inputs):
            utils.check_finite(x, "inputs")
        return reset

    def call(self, inputs, reset=None, state=None, training=None, **kwargs):
        reset = self._validate_call(inputs, reset, state, kwargs)
        if reset is not None:
            reset = ops.cast(reset, "bool")
        if self._step_takes_training:
            kwargs["training"] = training
        if state is not None:
            outputs, new_state = self.step(inputs, state, reset=reset, **kwargs)
            check_state_keys(new_state, self._state_variables or state, "new_state")
            return outputs, new_state
        # ops.copy: PyTorch's autograd must not see the assign below in place.
        current = {k: ops.copy(v.value) for k, v in self._state_variables.items()}
        outputs, new_state = self.step(inputs, current, reset=reset, **kwargs)
        # Every tensor is checked before any is written: a wrong one must
        # not leave the memory half updated.
        check_state_keys(new_state, self._state_variables, "new_state")
        for name, variable in self._state_variables.items():
            value = new_state[name]
            got, want = tuple(value.shape), tuple(variable.shape)
            if len(got) != len(want) or any(
                g is not None and w is not None and g != w for g, w in zip(got, want)
            ):
                raise ValueError(
                    f"The step of layer '{self.name}' returned "
                    f"`new_state['{name}']` of shape {got}; the memory "
                    f"variable has shape {want}. Nothing was written."
                )
            check_float_dtype(value, f"new_state['{name}']")
        for name, value in new_state.items():
            self._state_variables[name].assign(value)
        return outputs

    def compute_output_spec(self, inputs, reset=None, state=None, training=None, **kwargs):
        self._validate_call(inputs, reset, state, kwargs)
        outputs = self.compute_step_output_spec(inputs, **kwargs)
        if outputs is None:  # Not declared: Keras traces `call` symbolically.
            return super().compute_output_spec(
                inputs, reset=reset, state=state, training=training, **kwargs
            )
        if state is None:
            return outputs
        return outputs, self.state_spec(_batch_dim(inputs))

    def get_config(self):
        config = super().get_config()
        config["stateful"] = self.stateful
        return config


def _first_input(inputs):
    return keras.tree.flatten(inputs)[0]


def _batch_dim(inputs):
    # Not cast to int: under jax2tf (export) it is a symbolic dimension.
    return _first_input(inputs).shape[0]


def _shape_of(inputs):
    return tuple(_first_input(inputs).shape)


# -- model-level helpers ---------------------------------------------------------


def stateful_layers(model):
    """Every layer inside `model` that keeps memory in variables."""
    return [
        layer
        for layer in compat.flatten_layers(model)
        if getattr(layer, "stateful", False) and callable(getattr(layer, "reset_state", None))
    ]


def reset_memory(model):
    """Empty the memory of every stateful layer of `model` (all rows).

    Keras 3 models have no `reset_state()` of their own; this reaches every
    nested layer that has one and is stateful (ours, and stateful RNNs).
    Returns the number of layers reset.
    """
    layers = stateful_layers(model)
    for layer in layers:
        layer.reset_state()
    return len(layers)


class ResetMemory(keras.callbacks.Callback):
    """Empty all memory at the start of each epoch, evaluation and prediction.

    A stream read by `model.fit` starts again at each epoch, so the memory
    of the previous pass must not leak into it; evaluation and prediction
    share the model's memory variables with training, so they start empty
    too.

    Args:
        on_epoch_begin: bool. Reset at the start of each training epoch.
        on_test_begin: bool. Reset before each evaluation (also the
            validation at the end of an epoch).
        on_predict_begin: bool. Reset before each prediction.

    Examples:

    ```python
    model.fit(dataset, epochs=3, shuffle=False,
              callbacks=[keras_infformer.ResetMemory()])
    ```
    """

    def __init__(self, on_epoch_begin=True, on_test_begin=True, on_predict_begin=True):
        super().__init__()
        self.reset_on_epoch_begin = on_epoch_begin
        self.reset_on_test_begin = on_test_begin
        self.reset_on_predict_begin = on_predict_begin

    def on_epoch_begin(self, epoch, logs=None):
        if self.reset_on_epoch_begin:
            reset_memory(self.model)

    def on_test_begin(self, logs=None):
        if self.reset_on_test_begin:
            reset_memory(self.model)

    def on_predict_begin(self, logs=None):
        if self.reset_on_predict_begin:
            reset_memory(self.model)
