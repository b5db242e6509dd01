"""The streaming causal LM shared by every memory model of the package.

`StreamingCausalLM` holds what does not depend on the network: training on
streams (`fit` and friends, with the host-side guards of `stream_guards`),
`compile()` defaults, and `generate()` through the memory. A subclass brings
the network through a small contract (see the class docstring), so a new
model (e.g. a pretrained keras-hub decoder with a memory added) gets
generation equal to teacher forcing, stream training and serving by
writing that contract only.
"""

import keras
import keras_hub
import numpy as np
from keras import ops

from keras_infformer import compat, distribution, memory, metrics
from keras_infformer.models import stream_guards


class StreamingCausalLM(compat.SymbolicBuildBatch, keras_hub.models.CausalLM):
    """Base of the causal LMs with memory: streams in, `generate()` out.

    Not used directly. A subclass is a `keras_hub.models.CausalLM` whose
    `call` reads `{"token_ids", "reset"}` with the memory in variables, and
    that provides the pure, explicit-state contract below; everything else
    (stream training, generation, serving) is written here once against it.

    - `segment_length`, `vocabulary_size`, `batch_size`: ints.
    - `state_spec(batch_size=None)`, `get_initial_state(batch_size)`,
      `get_state()`, `set_state(state)`, `reset_state()`: the memory as a
      flat dict of float32 tensors, batch first.
    - `step(token_ids, reset, state, training=False)`: one segment, pure:
      `(logits, new_state)`.
    - `decode_state_spec(batch_size=None)`, `decode_state(state=None,
      batch_size=None)` and `decode(token_ids, state)`: token-by-token
      decoding (one token per row, `(logits (B, V), new_state)`) that
      reproduces `step`; the decoding state holds `position` `(B,)`.

    Args:
        **kwargs: passed to `keras_hub.models.CausalLM`.
    """

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        *,
        weighted_metrics="auto",
        sampler="top_k",
        **kwargs,
    ):
        """Configures training and generation, with defaults for streams.

        `optimizer="auto"`: Adam (learning rate 1e-3, global gradient norm
        clipped at 1). `loss="auto"`: sparse cross-entropy over logits,
        averaged over real tokens only (padding has sample weight 0 in a
        `StreamingDataset`). `weighted_metrics="auto"`: accuracy,
        perplexity and bits per token, over real tokens only.
        `sampler`: a `keras_hub.samplers` name or instance for `generate()`.

        On a compiled model, `compile(sampler=...)` alone (every other
        argument left to its default) changes only the sampler: the
        optimizer (with its state: iterations, moments, learning rate), the
        loss and the metrics are kept, so a model trained with `fit` can
        change how it generates and still resume training (or be saved
        with its optimizer). Pass `optimizer=` (or any other argument) to
        compile anew.
        """
        self._check_sampler_argument(sampler)
        if (
            getattr(self, "compiled", False)
            and getattr(self, "optimizer", None) is not None
            and _is_auto(optimizer)
            and _is_auto(loss)
            and _is_auto(weighted_metrics)
            and not kwargs
        ):
            self.sampler = keras_hub.samplers.get(sampler)
            self.generate_function = None  # Compiled for the old sampler.
            return
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(1e-3, global_clipnorm=1.0)
        if loss == "auto":
            loss = metrics.masked_token_loss()
        if weighted_metrics == "auto":
            weighted_metrics = metrics.language_model_metrics()
        super().compile(
            optimizer=optimizer,
            loss=loss,
            weighted_metrics=weighted_metrics,
            sampler=sampler,
            **kwargs,
        )

    @staticmethod
    def _check_sampler_argument(sampler):
        try:
            valid = isinstance(keras_hub.samplers.get(sampler), keras_hub.samplers.Sampler)
        except (ValueError, TypeError):
            valid = False
        if not valid:
            raise ValueError(
                "`sampler` must be a keras_hub.samplers name ('greedy', "
                "'top_k', 'top_p', 'random', ...) or a Sampler instance. "
                f"Received: sampler={sampler!r}"
            )

    def get_compile_config(self):
        # keras-hub keeps the sampler out of Keras' compile config; save it
        # too, so that a loaded model generates as the saved one did.
        config = super().get_compile_config()
        sampler = getattr(self, "sampler", None)
        if config and sampler is not None:
            config = dict(config)
            config["sampler"] = keras_hub.samplers.serialize(sampler)
        return config

    def compile_from_config(self, config):
        # Keras skips an overridden `compile()` when loading a `.keras` file;
        # compiling with what it saved lets a loaded model train on (with
        # its optimizer's saved variables) without a manual `compile()`.
        config = dict(config)
        sampler = config.pop("sampler", None)
        config = keras.saving.deserialize_keras_object(config)
        if sampler is not None:
            config["sampler"] = keras_hub.samplers.deserialize(sampler)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    # -- validation ----------------------------------------------------------

    def _validate_inputs(self, token_ids, reset, batch_size=None, length=None):
        if length is None:
            stream_guards.validate_inputs(self, token_ids, reset, batch_size)
            return
        stream_guards.check_token_ids(token_ids, self.vocabulary_size, length, batch_size)
        memory.check_reset(reset, tuple(token_ids.shape)[0])

    def _step_inputs(self, token_ids, reset, state):
        """`step()`'s inputs checked (tokens, reset flags, the state against
        `state_spec`) and converted: `(token_ids, reset)` as tensors."""
        if not hasattr(token_ids, "shape"):
            token_ids = np.asarray(token_ids)
        self._validate_inputs(token_ids, reset)
        token_ids = stream_guards.clip_traced_token_ids(
            ops.convert_to_tensor(token_ids), self.vocabulary_size
        )
        memory.check_state(state, self.state_spec(token_ids.shape[0]), "state", reset)
        if reset is not None:
            reset = ops.cast(reset, "bool")
        return token_ids, reset

    # -- training on streams ------------------------------------------------

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        # The memory carries each row from one batch to the next, so the
        # batches must come in order: Keras' default `shuffle=True` would
        # reorder them (a PyDataset's too). Default to False, refuse True.
        shuffle = args[5] if len(args) > 5 else kwargs.get("shuffle", False)
        if shuffle:
            raise ValueError(
                f"{type(self).__name__} keeps one memory per batch row and must "
                "read the batches of a stream in order; shuffling would mix "
                f"unrelated segments into the memory. Received: shuffle={shuffle!r}"
            )
        if len(args) <= 5:
            kwargs["shuffle"] = False
        # Every batch is checked on the host before its step (stream_guards).
        x, batch_size, args, kwargs = stream_guards.check_fit_arguments(
            self, x, batch_size, args, kwargs
        )
        self._check_targets(x, y)
        # keras.Model's fit, not keras-hub's: a stream is laid out across
        # batches, so no per-sample preprocessing may touch it.
        with stream_guards.refusals_as_errors():
            return keras.Model.fit(self, x, y, batch_size, *args, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, *args, **kwargs):
        if not compat.is_fit_validation(kwargs):  # (Else fit's, checked.)
            x, batch_size = stream_guards.check_data(self, x, batch_size)
            self._check_targets(x, y)
        with stream_guards.refusals_as_errors():
            return keras.Model.evaluate(self, x, y, batch_size, *args, **kwargs)

    def predict(self, x, batch_size=None, *args, **kwargs):
        x, batch_size = stream_guards.check_data(self, x, batch_size)
        with stream_guards.refusals_as_errors():
            return keras.Model.predict(self, x, batch_size, *args, **kwargs)

    def _check_targets(self, x, y):
        if y is not None:
            token_ids = x.get("token_ids") if isinstance(x, dict) else None
            stream_guards.check_targets(y, self.vocabulary_size, token_ids)

    def train_on_batch(self, x, *args, **kwargs):
        y = args[0] if args else kwargs.get("y")
        stream_guards.check_batch(self, x, y=y)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        y = args[0] if args else kwargs.get("y")
        stream_guards.check_batch(self, x, y=y)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        stream_guards.check_batch(self, x)
        return super().predict_on_batch(x)

    # (JAX's trainer passes the state too, hence *args.)
    def train_step(self, *args):
        return distribution.step_logs(super().train_step(*args))

    def test_step(self, *args):
        return distribution.step_logs(super().test_step(*args))

    # JAX: a step that raises puts the variables back (stream_guards).
    def make_train_function(self, force=False):
        super().make_train_function(force)
        stream_guards.guard_step_function(self, "train_function")
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        stream_guards.guard_step_function(self, "test_function")
        return self.test_function

    def make_predict_function(self, force=False):
        super().make_predict_function(force)
        stream_guards.guard_step_function(self, "predict_function")
        return self.predict_function

    def call(self, inputs, training=None, mask=None):
        inputs = stream_guards.check_call_inputs(self, inputs)
        return super().call(inputs, training=training, mask=mask)

    def symbolic_build_batch(self, iterator):
        # TensorFlow trainer with a tf.distribute strategy only: Keras would
        # average the first batch over the replicas to build symbolically,
        # which fails on the bool `reset`; replica 0's part builds the same.
        return distribution.first_replica_batch(self, iterator)

    # -- generation ----------------------------------------------------------

    def _check_sampler(self):
        sampler = self.sampler
        if type(sampler).__call__ is not keras_hub.samplers.Sampler.__call__:
            raise ValueError(
                "generate() reads the prompt into the memory once and decodes "
                "one token at a time; samplers that re-run several hypotheses "
                "are not supported. Use 'greedy', 'top_k', 'top_p' or "
                f"'random'. Received: sampler={type(sampler).__name__}"
            )

    def generate_step(self, inputs, stop_token_ids=None):
        """One batch, compilable: prompt in, tokens (and state) out.

        `inputs`: `token_ids` `(B, T)`, `padding_mask` `(B, T)` (True over
        each row's prompt, which starts at position 0), `state` (a decoding
        state) and optionally `logits` `(B, T, V)` to collect every logit
        computed (position `t` predicts `t + 1`).
        """
        token_ids = ops.cast(inputs["token_ids"], "int32")
        padding_mask = ops.cast(inputs["padding_mask"], "bool")
        state = inputs["state"]
        collected = inputs.get("logits")
        batch, total = token_ids.shape
        length = self.segment_length
        # Tokens every row has as prompt: read them before sampling.
        prompt_end = ops.min(ops.sum(ops.cast(padding_mask, "int32"), axis=1))

        def token(index):
            return ops.slice(token_ids, [0, index], [batch, 1])

        def record(logits_buffer, index, logits):
            if logits_buffer is None:
                return None
            return _write_logits(logits_buffer, index, logits[:, None, :])

        # 1. Mid-segment (a continued state): single tokens up to a boundary.
        def partial_cond(consumed, state, buffer):
            at_boundary = ops.equal(ops.cast(state["position"][0], "int32"), 0)
            return ops.logical_and(ops.logical_not(at_boundary), consumed < prompt_end - 1)

        def partial_body(consumed, state, buffer):
            logits, state = self.decode(token(consumed), state)
            return consumed + 1, state, record(buffer, consumed, logits)

        # 2. Whole segments of prompt, teacher-forced, a segment per step
        #    (none fits when `max_length` < `segment_length`: the loop is
        #    left out, as JAX cannot even trace a slice longer than the ids).
        def segment_cond(consumed, state, buffer):
            at_boundary = ops.equal(ops.cast(state["position"][0], "int32"), 0)
            return ops.logical_and(at_boundary, consumed + length <= prompt_end - 1)

        def segment_body(consumed, state, buffer):
            segment = ops.slice(token_ids, [0, consumed], [batch, length])
            step_state = {k: state[k] for k in self.state_spec()}
            logits, step_state = self.step(segment, None, step_state)
            if buffer is not None:
                buffer = _write_logits(buffer, consumed, logits)
            return consumed + length, self.decode_state(step_state), buffer

        loop_vars = (ops.convert_to_tensor(0, "int32"), state, collected)
        if collected is None:
            loop_vars = loop_vars[:2]
            partial = lambda c, s: partial_body(c, s, None)[:2]  # noqa: E731
            whole = lambda c, s: segment_body(c, s, None)[:2]  # noqa: E731
            consumed, state = ops.while_loop(
                lambda c, s: partial_cond(c, s, None),
                partial,
                loop_vars,
                maximum_iterations=length,
            )
            if total >= length:
                consumed, state = ops.while_loop(
                    lambda c, s: segment_cond(c, s, None),
                    whole,
                    (consumed, state),
                )
        else:
            consumed, state, collected = ops.while_loop(
                partial_cond, partial_body, loop_vars, maximum_iterations=length
            )
            if total >= length:
                consumed, state, collected = ops.while_loop(
                    segment_cond, segment_body, (consumed, state, collected)
                )

        # 3. The rest one token at a time; prompt tokens are kept as they
        #    are, the others sampled.
        sampler = self.sampler

        def sample_cond(prompt, state, buffer, index):
            if stop_token_ids is None:
                return ops.convert_to_tensor(True)
            # Only generated positions count: the prompt's and those not
            # written yet (padding, maybe a stop id itself) do not.
            written = ops.arange(total)[None, :] < index
            generated = ops.logical_and(ops.logical_not(padding_mask), written)
            ends = _any_equal(prompt, stop_token_ids, generated)
            return ops.logical_not(ops.all(ops.any(ends, axis=-1)))

        def sample_body(prompt, state, buffer, index):
            previous = ops.slice(prompt, [0, index - 1], [batch, 1])
            logits, state = self.decode(previous, state)
            if buffer is not None:
                buffer = _write_logits(buffer, index - 1, logits[:, None, :])
            next_token = sampler.get_next_token(sampler.compute_probabilities(logits))
            next_token = ops.cast(next_token, prompt.dtype)
            keep = ops.slice(padding_mask, [0, index], [batch, 1])[:, 0]
            current = ops.slice(prompt, [0, index], [batch, 1])[:, 0]
            next_token = ops.where(keep, current, next_token)
            prompt = ops.slice_update(prompt, [0, index], next_token[:, None])
            return prompt, state, buffer, index + 1

        if collected is None:
            body = lambda p, s, i: _drop_buffer(sample_body(p, s, None, i))  # noqa: E731
            cond = lambda p, s, i: sample_cond(p, s, None, i)  # noqa: E731
            token_ids, state, index = sampler.run_loop(
                cond,
                body,
                loop_vars=(token_ids, state, consumed + 1),
                maximum_iterations=total - consumed - 1,
                model=self,
            )
        else:
            token_ids, state, collected, index = sampler.run_loop(
                sample_cond,
                sample_body,
                loop_vars=(token_ids, state, collected, consumed + 1),
                maximum_iterations=total - consumed - 1,
                model=self,
            )
        # The state reads every position up to the last one generated.
        logits, state = self.decode(ops.slice(token_ids, [0, index - 1], [batch, 1]), state)
        if collected is not None:
            collected = _write_logits(collected, index - 1, logits[:, None, :])

        # Positions never reached (all rows stopped early) hold no token.
        reached = ops.arange(total)[None, :] < index
        if stop_token_ids is not None:
            generated = ops.logical_and(ops.logical_not(padding_mask), reached)
            ends = ops.cast(_any_equal(token_ids, stop_token_ids, generated), "int32")
            after_end = ops.cumsum(ends, axis=-1) - ends
            padding_mask = ops.logical_not(ops.cast(after_end, "bool"))
        else:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        padding_mask = ops.logical_and(padding_mask, reached)
        outputs = {"token_ids": token_ids, "padding_mask": padding_mask, "state": state}
        if collected is not None:
            outputs["logits"] = collected
        return outputs

    def generate(
        self,
        inputs,
        max_length=None,
        stop_token_ids="auto",
        strip_prompt=False,
        state=None,
        return_state=False,
        return_logits=False,
    ):
        """Continue prompts of any length, through the memory.

        Each prompt is read segment by segment into the memories (as
        teacher-forced streaming reads it), then tokens are drawn one at a
        time with the compiled `sampler` until `max_length` tokens (prompt
        included) or until every row has produced a stop token. Generation
        never touches the model's training memory (its variables).

        Args:
            inputs: a string or a list of strings (with a preprocessor), or
                `{"token_ids", "padding_mask"}` arrays `(batch, max_length)`
                with each prompt left-aligned, or an int array `(batch,
                prompt_length)` of prompts of equal length.
            max_length: int. Total length, prompt included. Defaults to
                the longest prompt plus one segment.
            stop_token_ids: `"auto"` (the tokenizer's end token, if any),
                `None`, or a tuple of ids that end a row.
            strip_prompt: bool. Return only the generated part.
            state: optional decoding state from an earlier
                `generate(..., return_state=True)`: the prompt continues it
                (nothing is read again). Defaults to empty memories.
            return_state: bool. Also return the decoding state after the
                last generated token.
            return_logits: bool. Also return every logit computed, `(batch,
                max_length, vocabulary_size)` (position `t` predicts
                `t + 1`; zeros after the last position reached when every
                row stopped early).

        Returns:
            Strings (with a preprocessor) or `{"token_ids",
            "padding_mask"}`; then the state and the logits when asked.
        """
        self._check_sampler()
        is_text = isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)
        )
        if is_text:
            if self.preprocessor is None:
                raise ValueError(
                    "generate() got text but the model has no `preprocessor`. "
                    "Pass token ids, or build the model with an "
                    "InfiniteFormerCausalLMPreprocessor."
                )
            prompts = [inputs] if isinstance(inputs, str) else list(inputs)
            if any(not p for p in prompts):
                raise ValueError("A prompt is empty: generation needs at least one token.")
            batch = self._preprocess_prompts(prompts, max_length)
        else:
            batch = self._prompt_arrays(inputs, max_length)
        token_ids = np.asarray(ops.convert_to_numpy(batch["token_ids"]))
        padding_mask = np.asarray(ops.convert_to_numpy(batch["padding_mask"])).astype(bool)
        lengths = padding_mask.sum(axis=1)
        if token_ids.ndim == 2 and token_ids.shape[0] == 0:
            raise ValueError(
                "generate() needs at least one prompt. Received: token_ids of "
                f"shape {token_ids.shape}"
            )
        if token_ids.ndim != 2 or (lengths == 0).any():
            raise ValueError(
                f"Every prompt needs at least one token. Received prompt lengths {lengths.tolist()}"
            )
        if not (padding_mask == (np.arange(token_ids.shape[1]) < lengths[:, None])).all():
            raise ValueError(
                "Each prompt must start at position 0 (left-aligned, "
                "`padding_mask` True over the prompt only)."
            )
        self._validate_inputs(token_ids[padding_mask][None, :], None, length=int(lengths.sum()))
        rows = token_ids.shape[0]
        if state is None:
            state = self.decode_state(batch_size=rows)
        else:
            memory.check_state(state, self.decode_state_spec(rows), "state")
            positions = np.asarray(ops.convert_to_numpy(state["position"]))
            bad = (
                (
                    (positions != np.round(positions))
                    | (positions < 0)
                    | (positions >= self.segment_length)
                )
                if positions.dtype.kind in "iuf"
                else np.ones(positions.shape, bool)
            )
            if bad.any():
                raise ValueError(
                    "`state['position']` must hold whole numbers in [0, "
                    f"segment_length={self.segment_length}) (the next token's "
                    "position in its segment). Received: "
                    f"state['position']={positions.tolist()}"
                )
            if positions.size and not (positions == positions[0]).all():
                raise ValueError(
                    "Every row of a decoding `state` must be at the same "
                    f"position of its segment. Received: position={positions.tolist()}"
                )
        if isinstance(stop_token_ids, str) and stop_token_ids == "auto":
            end = self._end_token_id()
            stop_token_ids = None if end is None else (int(end),)
        elif stop_token_ids is not None:
            stop_token_ids = self._checked_stop_token_ids(stop_token_ids)

        step_inputs = {
            "token_ids": token_ids.astype("int32"),
            "padding_mask": padding_mask,
            "state": {k: ops.convert_to_tensor(v, "float32") for k, v in state.items()},
        }
        if return_logits:
            step_inputs["logits"] = np.zeros(token_ids.shape + (self.vocabulary_size,), "float32")
        generate_function = self.make_generate_function()
        outputs = generate_function(step_inputs, stop_token_ids=stop_token_ids)
        result = {
            "token_ids": np.asarray(ops.convert_to_numpy(outputs["token_ids"])),
            "padding_mask": np.asarray(ops.convert_to_numpy(outputs["padding_mask"])),
        }
        if strip_prompt:
            result = _strip_prompt(result, padding_mask)
        if is_text:
            texts = self._postprocess_tokens(result)
            result = texts[0] if isinstance(inputs, str) else texts
        extras = []
        if return_state:
            extras.append(outputs["state"])
        if return_logits:
            extras.append(np.asarray(ops.convert_to_numpy(outputs["logits"])))
        return (result, *extras) if extras else result

    def _checked_stop_token_ids(self, stop_token_ids):
        """`stop_token_ids` as a non-empty tuple of ids in the vocabulary."""
        message = (
            "`stop_token_ids` must be 'auto', None (no stop token) or a "
            "non-empty sequence of integer token ids in [0, vocabulary_size="
            f"{self.vocabulary_size}). Received: stop_token_ids={stop_token_ids!r}"
        )
        if isinstance(stop_token_ids, (int, np.integer)) and not isinstance(
            stop_token_ids, (bool, np.bool_)
        ):
            stop_token_ids = (stop_token_ids,)
        try:
            ids = np.asarray(stop_token_ids)
        except (ValueError, TypeError):
            raise ValueError(message) from None
        if (
            isinstance(stop_token_ids, (str, bytes, dict))
            or ids.ndim != 1
            or ids.size == 0
            or ids.dtype.kind not in "iu"
            or (ids < 0).any()
            or (ids >= self.vocabulary_size).any()
        ):
            raise ValueError(message)
        return tuple(int(t) for t in ids)

    # -- text: what a subclass with another kind of preprocessor overrides --

    def _preprocess_prompts(self, prompts, max_length):
        """`{"token_ids", "padding_mask"}` (NumPy, left-aligned) of the
        prompts; `max_length` `None`: the longest prompt plus a segment."""
        if max_length is None:
            longest = max(
                len(self.preprocessor.generate_preprocess([p])["token_ids"][0]) for p in prompts
            )
            max_length = longest + self.segment_length
        return self.preprocessor.generate_preprocess(prompts, sequence_length=max_length)

    def _postprocess_tokens(self, result):
        """Generated `{"token_ids", "padding_mask"}` to a list of strings."""
        return self.preprocessor.generate_postprocess(result)

    def _end_token_id(self):
        """The id that ends generation with `stop_token_ids="auto"`."""
        if self.preprocessor is None:
            return None
        return getattr(self.preprocessor, "end_token_id", None)

    def _prompt_arrays(self, inputs, max_length):
        """`{"token_ids", "padding_mask"}` from arrays given to `generate()`."""
        if isinstance(inputs, dict):
            if "token_ids" not in inputs or "padding_mask" not in inputs:
                raise ValueError(
                    "Without a preprocessor, generate() takes "
                    "{'token_ids', 'padding_mask'} or an int array. Received "
                    f"keys {sorted(inputs)}"
                )
            token_ids = np.asarray(ops.convert_to_numpy(inputs["token_ids"]))
            padding_mask = np.asarray(ops.convert_to_numpy(inputs["padding_mask"]))
            if token_ids.ndim == 1 and padding_mask.ndim == 1:  # One prompt.
                token_ids, padding_mask = token_ids[None], padding_mask[None]
            if token_ids.ndim != 2 or token_ids.shape[1] == 0:
                raise ValueError(
                    "`inputs['token_ids']` must have shape (batch, max_length). "
                    f"Received: inputs['token_ids'].shape={token_ids.shape}"
                )
            if padding_mask.shape != token_ids.shape:
                raise ValueError(
                    "`inputs['padding_mask']` must have the shape of "
                    f"`inputs['token_ids']`, {token_ids.shape}. Received: "
                    f"inputs['padding_mask'].shape={padding_mask.shape}"
                )
            if token_ids.dtype.kind not in "iu":
                raise TypeError(
                    "`inputs['token_ids']` must hold integer token ids. "
                    f"Received: inputs['token_ids'].dtype={token_ids.dtype}"
                )
            if padding_mask.dtype.kind != "b" and not np.isin(padding_mask, (0, 1)).all():
                raise ValueError(
                    "`inputs['padding_mask']` must hold booleans (or 0/1). "
                    f"Received: inputs['padding_mask'] of dtype {padding_mask.dtype}"
                )
            return {"token_ids": token_ids, "padding_mask": padding_mask.astype(bool)}
        prompts = np.asarray(inputs)
        if prompts.ndim == 1:
            prompts = prompts[None, :]
        if prompts.ndim != 2 or prompts.shape[1] == 0:
            raise ValueError(
                "generate() needs prompts of shape (batch, length >= 1). "
                f"Received shape {prompts.shape}"
            )
        if prompts.dtype.kind not in "iu":
            raise TypeError(f"Prompt token ids must be integers. Received dtype {prompts.dtype}")
        length = prompts.shape[1]
        if max_length is None:
            max_length = length + self.segment_length
        if max_length < length:
            raise ValueError(
                f"`max_length` ({max_length}) must be at least the prompt length ({length})."
            )
        token_ids = np.zeros((prompts.shape[0], max_length), "int32")
        token_ids[:, :length] = prompts
        padding_mask = np.zeros_like(token_ids, dtype=bool)
        padding_mask[:, :length] = True
        return {"token_ids": token_ids, "padding_mask": padding_mask}


def _is_auto(value):
    return isinstance(value, str) and value == "auto"


def _any_equal(inputs, values, padding_mask):
    """Where `inputs` equals any of `values`, where `padding_mask` is True."""
    output = ops.equal(inputs, values[0])
    for value in values[1:]:
        output = ops.logical_or(output, ops.equal(inputs, value))
    return ops.logical_and(output, padding_mask)


def _write_logits(buffer, index, logits):
    """`logits` `(B, n, V)` written into the float32 `buffer` at `index`
    (under a mixed policy the model computes them in bfloat16)."""
    return ops.slice_update(buffer, [0, index, 0], ops.cast(logits, buffer.dtype))


def _drop_buffer(loop_vars):
    prompt, state, _, index = loop_vars
    return prompt, state, index


def _strip_prompt(result, prompt_mask):
    """Only the generated part of each row, left-aligned."""
    token_ids, mask = result["token_ids"], result["padding_mask"]
    generated = np.logical_and(mask, np.logical_not(prompt_mask))
    out_ids = np.zeros_like(token_ids)
    out_mask = np.zeros_like(mask)
    for row in range(token_ids.shape[0]):
        ids = token_ids[row][generated[row]]
        out_ids[row, : len(ids)] = ids
        out_mask[row, : len(ids)] = True
    return {"token_ids": out_ids, "padding_mask": out_mask}
