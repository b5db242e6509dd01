"""Wirings of today's keras-hub decoders: Llama, Gemma and Qwen3.

The three families share the maths that differs from GPT-2: rotary
positions inside the attention layer, RMS norms, grouped-query attention
(fewer key/value heads than query heads) and a gated feed-forward block.
`RotaryDecoderWiring` runs one such decoder layer for the memory model;
`LlamaWiring`, `GemmaWiring` and `Qwen3Wiring` only say where each family
keeps its parts and what is its own (Gemma's embedding scale and
approximate-GELU gate, Qwen3's query norm).

How a layer runs, for all three (same layers, same order as keras-hub):

    h = attention_norm(x)
    attended = attention(h, causal mask)        # the layer's own call
    out = attended + read(h, memory_query(h))   # the ∞-former sum
    x = x + dropout(post_attention_norm(out))   # Gemma 2's post-norm only
    x = x + feedforward(ffn_norm(x))

The short-term part is the keras-hub attention layer called as a whole
(with its rotary positions, grouped-query heads, soft-capping and sliding
window, and its own key/value cache layout when decoding token by token),
so the wiring never re-implements attention. Every norm is the layer's
own norm object, so its formula (Gemma's `x * (1 + w)`, Llama's `x * w`)
is the pretrained one by construction.

**Memory with grouped-query attention.** The memory reads with the
layer's *query* heads as projected (`num_query_heads` heads of `head_dim`;
for Qwen3 after its per-head query norm, which belongs to the query's
projection) and *without* rotary positions. Its keys and values come from
the memory's own projections of the continuous signal, one per query
head, not from the layer's shared key/value heads:

- rotary positions encode a token's offset from another token; the memory
  is a continuous signal over [0, 1], with no token positions to rotate
  to, and a query rotated by its position in the segment would read the
  same memory differently at each position;
- the layer's key/value heads project token vectors, not the memory's
  basis coefficients, so there is nothing of theirs to share; giving each
  query head its own memory key/value keeps every query head's reading
  independent, as GPT-2's memory does (one memory head per head). The
  cost is small: the memory's projections act on `num_basis` points, not
  on the segment.

For Qwen3 the query norm makes the memory query unit-scale per head (as
its short-term keys are): the memory's keys, learned from zero output,
see the same scale in every layer.

**Private keras-hub attributes.** keras-hub offers no hook inside a decoder
layer, and Llama's and Qwen3's layers keep their parts under private names.
Those names live in `keras_infformer.compat` (`llama_decoder_parts`,
`qwen3_query_norm`); every part is looked up once, when the wiring is made,
through `compat.keras_hub_part()`, which fails with a message naming the
keras-hub version the names were taken from (`compat.KERAS_HUB_VERSION`)
if one has moved.
"""

import keras_hub
from keras import ops

from keras_infformer import compat
from keras_infformer.compat import (
    KERAS_HUB_VERSION,  # noqa: F401 (public here before)
    keras_hub_part,  # noqa: F401 (public here before)
)
from keras_infformer.models.backbone_wiring import BackboneWiring


def causal_mask(batch_size, query_length, key_length, start=0):
    """Boolean `(batch_size, query_length, key_length)`: query `i` (at
    position `start + i`) sees keys `0..start + i`, as keras-hub's decoders
    mask (including a cache of `key_length` during decoding)."""
    i = ops.arange(query_length, dtype="float32") + ops.cast(start, "float32")
    j = ops.arange(key_length, dtype="float32")
    mask = ops.greater_equal(ops.expand_dims(i, 1), ops.expand_dims(j, 0))
    return ops.broadcast_to(ops.expand_dims(mask, 0), (batch_size, query_length, key_length))


class RotaryDecoderWiring(BackboneWiring):
    """Shared wiring of rotary, RMS-normed, grouped-query keras-hub decoders.

    See the module docstring for the layer's maths and the memory's query.
    A family subclass sets `family` and `backbone_class_name` (the
    `keras_hub.models` class it takes) and implements `_resolve(block)`:
    the layer's parts by role (private names through `keras_infformer.compat`):

    - `"attention_norm"`, `"attention"`, `"ffn_norm"`, `"gate"`, `"up"`,
      `"down"`: required;
    - `"post_attention_norm"`, `"attention_dropout"`, `"post_ffn_norm"`:
      `None` where the layer has none.

    and `_memory_query(parts, h)`, `_gate(parts, gate)` where the family
    differs. Rotary positions have no learned table, so `max_length` is
    `None`: any `segment_length` is accepted (the pretrained context length
    is a sensible bound, not an enforced one).

    The attention layer is called whole, so it projects its query itself
    and `_memory_query` projects it again for the memory: one extra
    `hidden_dim x heads * head_dim` matmul per layer, the price of never
    copying keras-hub's attention code (fused kernels, soft-caps, sliding
    windows stay keras-hub's and exact).

    Args:
        backbone: the family's `keras_hub.models` backbone.
    """

    family = None
    backbone_class_name = None

    def __init__(self, backbone):
        self.backbone_cls = getattr(keras_hub.models, self.backbone_class_name)
        super().__init__(backbone)
        self.num_layers = int(backbone.num_layers)
        self.hidden_dim = int(backbone.hidden_dim)
        self.num_heads = int(backbone.num_query_heads)
        self.num_key_value_heads = int(backbone.num_key_value_heads)
        self.head_dim = self._head_dim(backbone)
        self.vocabulary_size = int(backbone.vocabulary_size)
        self.max_length = None
        # Every part looked up now, so a moved attribute fails at once.
        self._parts = [self._resolve(block) for block in backbone.transformer_layers]

    def _head_dim(self, backbone):
        return int(backbone.head_dim)

    def _resolve(self, block):
        raise NotImplementedError

    # -- per-family maths ------------------------------------------------

    def _embedding_scale(self, x):
        return x

    def _memory_query(self, parts, h):
        return parts["query"](h)

    def _gate(self, parts, gate):
        # Llama / Qwen3: the activation in float32, as torch's SiLU runs.
        gate = parts["activation"](ops.cast(gate, "float32"))
        return ops.cast(gate, parts["compute_dtype"])

    # -- the contract ------------------------------------------------------

    def embed(self, token_ids, start_index=0, training=None):
        # Positions are rotary, inside each attention layer.
        return self._embedding_scale(self.backbone.token_embedding(token_ids))

    def layer(self, index, x, read, training=None):
        parts = self._parts[index]
        h = parts["attention_norm"](x)
        batch_size, length = ops.shape(x)[0], ops.shape(x)[1]
        attended = parts["attention"](
            h,
            attention_mask=causal_mask(batch_size, length, length),
            training=training,
        )
        memory_output = read(h, self._memory_query(parts, h))
        return self._finish(parts, x, attended, memory_output, training)

    def cache_shape(self, length):
        # keras-hub's own layout: (2, length, key/value heads, head_dim).
        return (2, int(length), self.num_key_value_heads, self.head_dim)

    def decode_layer(self, index, x, cache, position, read):
        parts = self._parts[index]
        h = parts["attention_norm"](x)
        cache = ops.cast(cache, h.dtype)
        mask = causal_mask(ops.shape(x)[0], 1, ops.shape(cache)[2], position)
        attended, cache = parts["attention"](
            h,
            attention_mask=mask,
            cache=cache,
            cache_update_index=position,
            training=False,
        )
        memory_output = read(h, self._memory_query(parts, h))
        return self._finish(parts, x, attended, memory_output, False), cache

    def _finish(self, parts, x, attended, memory_output, training):
        # The paper's sum: short-term attention plus the memory read, then
        # whatever the layer does to its attention output.
        out = attended + ops.cast(memory_output, attended.dtype)
        if parts["post_attention_norm"] is not None:
            out = parts["post_attention_norm"](out)
        if parts["attention_dropout"] is not None:
            out = parts["attention_dropout"](out, training=training)
        x = x + out
        h = parts["ffn_norm"](x)
        h = parts["down"](ops.multiply(parts["up"](h), self._gate(parts, parts["gate"](h))))
        if parts["post_ffn_norm"] is not None:
            h = parts["post_ffn_norm"](h)
        return x + h

    def logits(self, hidden):
        # Tied or untied output, and any final soft-cap, are the embedding's.
        hidden = self.backbone.layer_norm(hidden)
        return self.backbone.token_embedding(hidden, reverse=True)


class LlamaWiring(RotaryDecoderWiring):
    """`keras_hub.models.LlamaBackbone`: Llama 2/3 (and Llama-style) decoders.

    Pre-norm RMS layers, rotary positions (Llama 3.1 frequency scaling
    included: it is the attention layer's own), grouped-query attention, a
    SiLU-gated feed-forward block; tied or untied output embedding (the
    `ReversibleEmbedding`'s own). The memory reads with the layer's query
    heads as projected by its query projection, without rotary positions, memory
    keys/values per query head (module docstring: why).
    """

    family = "Llama"
    backbone_class_name = "LlamaBackbone"

    def _head_dim(self, backbone):
        return int(backbone.hidden_dim) // int(backbone.num_query_heads)

    def _resolve(self, block):
        return compat.llama_decoder_parts(block)


class Qwen3Wiring(RotaryDecoderWiring):
    """`keras_hub.models.Qwen3Backbone`: Llama's layer plus per-head q/k norms.

    Qwen3 normalises each projected query and key head (RMS) before its
    rotary positions; the memory's query is the normalised query, without
    rotary positions (the norm is part of how Qwen3 projects a query; the
    key norm stays with the short-term keys, inside the attention layer).
    `head_dim` is the backbone's own (not `hidden_dim / heads`); the output
    embedding is tied by default.
    """

    family = "Qwen3"
    backbone_class_name = "Qwen3Backbone"

    def _resolve(self, block):
        parts = compat.llama_decoder_parts(block)
        parts["query_norm"] = compat.qwen3_query_norm(parts["attention"])
        return parts

    def _memory_query(self, parts, h):
        return parts["query_norm"](parts["query"](h))


class GemmaWiring(RotaryDecoderWiring):
    """`keras_hub.models.GemmaBackbone`: Gemma and Gemma 2 decoders.

    Gemma differs from Llama in what its own layers already hold (their
    `x * (1 + w)` RMS norms, the attention's head-dim query scaling, logit
    soft-capping in attention and at the output embedding, the sliding
    window of every other Gemma 2 layer) and in two things the wiring
    does: the embedding is scaled by `sqrt(hidden_dim)`, and the gate is
    an approximate GELU. Gemma 2's post-attention norm normalises the
    sum of the short-term attention and the memory read (the memory is
    part of the attention output); its post-feed-forward norm is applied
    as the layer does. The output embedding is tied. The memory reads with
    the public `query_dense` heads, without rotary positions.
    """

    family = "Gemma"
    backbone_class_name = "GemmaBackbone"

    def _resolve(self, block):
        dropout = bool(block.dropout)
        return {
            "attention_norm": block.pre_attention_norm,
            "attention": block.attention,
            "query": block.attention.query_dense,
            "post_attention_norm": (
                block.post_attention_norm if block.use_post_attention_norm else None
            ),
            "attention_dropout": block.attention_dropout if dropout else None,
            "ffn_norm": block.pre_ffw_norm,
            "gate": block.gating_ffw,
            "up": block.gating_ffw_2,
            "down": block.ffw_linear,
            "post_ffn_norm": block.post_ffw_norm if block.use_post_ffw_norm else None,
        }

    def _embedding_scale(self, x):
        return x * ops.cast(ops.sqrt(self.hidden_dim), x.dtype)

    def _gate(self, parts, gate):
        return ops.gelu(gate, approximate=True)
