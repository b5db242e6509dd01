"""Memory: the `MemoryLayer` base, its state, and the variables that hold it.

- `state`: state names and checks, reset flags, rows, decode positions.
- `layer`: the `MemoryLayer` base (a pure step wrapped in variables), and
  memory resets by model.
- `storage`: memory variables created, read and written row by row under
  every distribution engine.
- `registry`: the state names and ranks the layers declare (what
  `keras_infformer.distribution.layout_map()` shards).
"""

from keras_infformer.memory.layer import (
    MemoryLayer,
    ResetMemory,
    reset_memory,
    stateful_layers,
)
from keras_infformer.memory.registry import DECLARED_STATES, StateRegistry
from keras_infformer.memory.state import (
    check_float_dtype,
    check_reset,
    check_state,
    check_state_keys,
    decode_position,
    flatten_state,
    select_rows,
    state_name,
    unflatten_state,
)
from keras_infformer.memory.storage import (
    add_memory_variable,
    assign_memory,
    is_memory_variable,
    load_own_variables,
    local_memory,
    read_memory,
    save_own_variables,
)
