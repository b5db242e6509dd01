"""The names and ranks of the memory states that memory layers declare.

`keras_infformer.distribution.layout_map()` finds memory variables by path
(a path ending in a declared state name), so its rules follow what the
layers declare and cannot drift from it. `DECLARED_STATES` is the one
registry of a process, filled by `MemoryLayer.build` from each layer's
`state_spec()` before the layer creates its variables.
"""

import re


class StateRegistry:
    """Memory state names with their ranks, one rank per name.

    Examples:

    ```python
    registry = StateRegistry()
    registry.register({"stm": keras.KerasTensor((2, 8, 16))})
    registry.ranks()  # {"stm": 3}
    ```
    """

    def __init__(self):
        self._ranks = {}

    def register(self, spec, layer=None):
        """Record the names and ranks of a memory layer's state.

        A name must keep one rank across layers (layouts are found by path,
        and a layout has a rank): a `ValueError` otherwise, naming the layer.
        """
        for name, tensor in spec.items():
            rank = len(tensor.shape)
            known = self._ranks.setdefault(name, rank)
            if known != rank:
                owner = f" of layer '{layer.name}'" if layer is not None else ""
                raise ValueError(
                    f"The memory state '{name}'{owner} has rank {rank}, but another "
                    f"memory layer declared '{name}' with rank {known}. Memory "
                    "variables are laid out by name, so one name needs one rank: "
                    "rename this state."
                )

    def ranks(self):
        """`{name: rank}` of every state declared so far (a copy)."""
        return dict(self._ranks)

    def path_patterns(self):
        """`{rank: regex}` matching the paths of the memory variables.

        Each regex matches (`re.fullmatch`, as `LayoutMap` does) a path whose
        last component is a declared state name of that rank.
        """
        by_rank = {}
        for name, rank in sorted(self._ranks.items()):
            by_rank.setdefault(rank, []).append(re.escape(name))
        return {
            rank: r"(?:.*/)?(?:" + "|".join(names) + r")" for rank, names in sorted(by_rank.items())
        }


# The registry of this process: every memory layer built registers here.
DECLARED_STATES = StateRegistry()
