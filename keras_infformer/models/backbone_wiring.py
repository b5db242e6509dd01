"""Per-layer wiring of a pretrained keras-hub decoder with a continuous memory.

This is the extension point of `PretrainedMemoryCausalLM`. The model owns
everything that does not depend on the pretrained network: one
`ContinuousMemoryAttention` per layer, the memory state and its names,
segments, resets, token-by-token decoding (the partial segment, the
position, the sticky mass) and generation. A `BackboneWiring` owns the
maths of one family of keras-hub decoders, reusing the backbone's own
layer objects (their weights, as they are):

- `embed(token_ids, start_index, training)`: token ids to the first
  layer's input (positions count from `start_index`, the position in the
  segment);
- `layer(index, x, read, training)`: one decoder layer over a whole
  segment, causal;
- `decode_layer(index, x, cache, position, read)`: the same layer for one
  token at `position` of its segment, with the layer's own key/value
  cache of the partial segment (`cache_shape(segment_length)` per row);
- `logits(hidden)`: the final norm and the language-model head.

In `layer` and `decode_layer` the wiring calls `read(memory_inputs,
query)` once: `memory_inputs` `(B, T, hidden_dim)` are the vectors the
layer wants remembered, `query` `(B, T, num_heads, head_dim)` its own
projected query (without rotary positions: the memory has no token
positions). It adds the returned `(B, T, hidden_dim)` to its attention
output before the residual. `read` starts at zero (the memory's output
projection is zero), so a wiring that computes the pretrained layer
exactly gives the pretrained model exactly.

Adding a decoder means writing one subclass: the four methods, the sizes
(`num_layers`, `hidden_dim`, `num_heads`, `head_dim`, `vocabulary_size`,
`max_length`) and `backbone_cls`; then a model class is a
`PretrainedMemoryCausalLM` subclass with `wiring_cls`, `backbone_cls` and
`preprocessor_cls` set. Rotary, grouped-query decoders (Llama, Gemma,
Qwen3) share `keras_infformer.models.rotary_wiring.RotaryDecoderWiring`,
where a family is a few overrides; docs/new_decoder.md is the recipe.
"""

import keras_hub
from keras import ops

from keras_infformer import compat


class BackboneWiring:
    """How a memory model runs the layers of a pretrained backbone.

    See the module docstring for the contract. Subclasses check the
    backbone's type in `__init__` (a `TypeError` naming `backbone` and the
    type received) and set the size attributes.

    Args:
        backbone: the pretrained `keras_hub.models.Backbone`.
    """

    backbone_cls = None

    def __init__(self, backbone):
        backbone_cls = self.backbone_cls
        if backbone_cls is not None and not isinstance(backbone, backbone_cls):
            raise TypeError(
                f"`backbone` must be a {backbone_cls.__module__.split('.')[0]}"
                f".models.{backbone_cls.__name__}. Received: backbone of type "
                f"{type(backbone).__name__}"
            )
        self.backbone = backbone

    def embed(self, token_ids, start_index=0, training=None):
        raise NotImplementedError

    def layer(self, index, x, read, training=None):
        raise NotImplementedError

    def cache_shape(self, length):
        raise NotImplementedError

    def decode_layer(self, index, x, cache, position, read):
        raise NotImplementedError

    def logits(self, hidden):
        raise NotImplementedError


class GPT2Wiring(BackboneWiring):
    """`keras_hub.models.GPT2Backbone`: pre-norm blocks, learned positions.

    Each block runs as keras-hub's `TransformerDecoder` does (same layers,
    same order): `h = LN1(x)`, GPT-2's causal self-attention over the
    segment, plus the memory read with GPT-2's projected query, summed
    before the dropout and the residual; then the feed-forward sub-block.

    What a layer remembers is `h`, its *normalised* input: the vectors
    GPT-2's own keys and values are made from, so the memory holds the
    same kind of context as the short-term attention, at the scale the
    layer norm sets. The raw residual stream `x` grows with depth (by
    orders of magnitude in GPT-2's last layers), which would make one
    ridge fit and one set of memory projections per layer see very
    differently scaled signals.

    keras-hub has no public hook inside a decoder layer, so this wiring
    calls the layer's own sublayers, its causal mask and its attention
    through `keras_infformer.compat` (private names; the attention's
    projections are public); it is tested against `GPT2CausalLM` with
    keras-hub 0.32 (pinned in .ci/constraints.txt).
    """

    def __init__(self, backbone):
        self.backbone_cls = keras_hub.models.GPT2Backbone
        super().__init__(backbone)
        self.num_layers = int(backbone.num_layers)
        self.hidden_dim = int(backbone.hidden_dim)
        self.num_heads = int(backbone.num_heads)
        self.head_dim = self.hidden_dim // self.num_heads
        self.vocabulary_size = int(backbone.vocabulary_size)
        self.max_length = int(backbone.max_sequence_length)

    def embed(self, token_ids, start_index=0, training=None):
        backbone = self.backbone
        tokens = backbone.token_embedding(token_ids)
        positions = backbone.position_embedding(tokens, start_index=start_index)
        x = backbone.embeddings_add((tokens, positions))
        return backbone.embeddings_dropout(x, training=training)

    def layer(self, index, x, read, training=None):
        block = self.backbone.transformer_layers[index]
        parts = compat.transformer_decoder_parts(block)
        attention = parts["attention"]
        h = parts["attention_norm"](x)
        query = attention.query_dense(h)
        key = attention.key_dense(h)
        value = attention.value_dense(h)
        mask = compat.transformer_decoder_causal_mask(block, x)
        attended = compat.multi_head_attention(
            attention, query, key, value, mask, training=training
        )
        return self._finish(parts, x, attended, read(h, query), training)

    def cache_shape(self, length):
        # keras-hub's own layout: (2, length, heads, head_dim), keys first.
        return (2, int(length), self.num_heads, self.head_dim)

    def decode_layer(self, index, x, cache, position, read):
        block = self.backbone.transformer_layers[index]
        parts = compat.transformer_decoder_parts(block)
        attention = parts["attention"]
        h = parts["attention_norm"](x)
        query = attention.query_dense(h)
        start = [0, position, 0, 0]
        key = ops.slice_update(ops.cast(cache[:, 0], query.dtype), start, attention.key_dense(h))
        value = ops.slice_update(
            ops.cast(cache[:, 1], query.dtype), start, attention.value_dense(h)
        )
        cache = ops.stack((key, value), axis=1)
        mask = compat.transformer_decoder_causal_mask(block, x, cache, position)
        attended = compat.multi_head_attention(attention, query, key, value, mask, training=False)
        return self._finish(parts, x, attended, read(h, query), False), cache

    def _finish(self, parts, x, attended, memory_output, training):
        attention_output = parts["attention"].output_dense(attended)
        # The paper's sum: short-term attention plus the memory read.
        attention_output = attention_output + ops.cast(memory_output, attention_output.dtype)
        x = parts["attention_dropout"](attention_output, training=training) + x
        residual = x
        h = parts["ffn_norm"](x)
        h = parts["up"](h)
        h = parts["down"](h)
        h = parts["ffn_dropout"](h, training=training)
        return h + residual

    def logits(self, hidden):
        hidden = self.backbone.layer_norm(hidden)
        return self.backbone.token_embedding(hidden, reverse=True)
