import keras
import keras_hub
import numpy as np

from keras_infformer.data import text as text_utils
from keras_infformer.data.streaming import StreamingDataset


def _check_texts(texts):
    if isinstance(texts, (str, bytes)) or not isinstance(texts, (list, tuple)):
        raise TypeError(
            "`texts` must be a list of strings, one document each (a single "
            "document: `[text]`). Received: texts of type "
            f"{type(texts).__name__}"
            + (f" ({texts[:40]!r}...)" if isinstance(texts, (str, bytes)) else "")
        )


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerCausalLMPreprocessor(keras_hub.models.Preprocessor):
    """Text to token streams for an `InfiniteFormerCausalLM`, and back.

    Holds a keras-hub tokenizer (`keras_hub.tokenizers.ByteTokenizer` by
    default: 256 byte ids, no vocabulary file; any `BytePairTokenizer` or
    `SentencePieceTokenizer` built from your vocabulary works the same).
    A memory model reads documents as streams, not as independent padded
    sequences, so training data comes from `streaming_dataset()`: texts (or
    a directory of `.txt` files) are tokenized, one document each, and laid
    into `batch_size` parallel streams of `segment_length` tokens whose
    targets never cross a document. `generate_preprocess()` and
    `generate_postprocess()` are the `generate()` side, as in keras-hub.

    Args:
        tokenizer: a `keras_hub.tokenizers.Tokenizer`. Defaults to
            `ByteTokenizer(lowercase=False)`, which round-trips any text.
        add_end_token: bool. Append the tokenizer's `end_token_id` to every
            document, so a model learns where documents stop (and
            `generate()` can stop there). Defaults to `False`.
        pad_token_id: int. The id of padding. Defaults to the tokenizer's
            `pad_token_id`, else `0`.
        sequence_length: optional int. The length of a training segment
            (the model's `segment_length`), as keras-hub preprocessors
            have one: the default `segment_length` of `streaming_dataset()`
            and of `call()`, and the default padded length of
            `generate_preprocess()`. Defaults to `None` (pass them).
        **kwargs: passed to `keras_hub.models.Preprocessor`.

    Examples:

    ```python
    import keras_infformer

    preprocessor = keras_infformer.models.InfiniteFormerCausalLMPreprocessor()
    stream = preprocessor.streaming_dataset(
        ["A first document.", "A second, longer document."],
        batch_size=2, segment_length=8,
    )
    inputs, targets, sample_weight = stream[0]
    prompts = preprocessor.generate_preprocess(["Once upon"], sequence_length=32)
    ```
    """

    def __init__(
        self,
        tokenizer=None,
        add_end_token=False,
        pad_token_id=None,
        sequence_length=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        if tokenizer is None:
            tokenizer = keras_hub.tokenizers.ByteTokenizer(lowercase=False)
        if not callable(tokenizer) or not hasattr(tokenizer, "detokenize"):
            raise TypeError(
                "`tokenizer` must be a keras-hub tokenizer (callable, with "
                f"`detokenize`). Received: tokenizer={tokenizer!r}"
            )
        self.tokenizer = tokenizer
        self.add_end_token = bool(add_end_token)
        if self.add_end_token and getattr(tokenizer, "end_token_id", None) is None:
            raise ValueError(
                "`add_end_token=True` needs a tokenizer with an `end_token_id`. "
                f"Received: tokenizer={type(tokenizer).__name__}"
            )
        if pad_token_id is None:
            pad_token_id = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = 0 if pad_token_id is None else int(pad_token_id)

    @property
    def sequence_length(self):
        """The length of a training segment (see the class), or `None`."""
        return self._sequence_length

    @sequence_length.setter
    def sequence_length(self, value):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
        ):
            raise ValueError(
                "`sequence_length` must be a positive int or None. Received: "
                f"sequence_length={value!r}"
            )
        self._sequence_length = None if value is None else int(value)

    @property
    def end_token_id(self):
        return getattr(self.tokenizer, "end_token_id", None)

    def vocabulary_size(self):
        return int(self.tokenizer.vocabulary_size())

    def tokenize_documents(self, texts, keep_empty=False):
        """One int32 array of token ids per (non-empty) text; `keep_empty`:
        an empty array for an empty text too (the i-th array is `texts[i]`'s)."""
        _check_texts(texts)
        end = self.end_token_id if self.add_end_token else None
        return text_utils.tokenize_documents(
            self.tokenizer, list(texts), end, keep_empty=keep_empty
        )

    def streaming_dataset(
        self, texts=None, batch_size=None, segment_length=None, directory=None, **kwargs
    ):
        """Texts, or the `.txt` files of `directory`, as a `StreamingDataset`.

        Args:
            texts: list of str, one document each (or `None` with
                `directory`). Empty texts are skipped; document indices
                (`positions()`, `stream_documents`) refer to this list.
            batch_size: int. Parallel streams (the model's batch size).
            segment_length: int. Tokens per segment (the model's).
                Defaults to `sequence_length`.
            directory: str. Read every `.txt` file below it instead.
            **kwargs: passed to `StreamingDataset` (`pad_id` defaults to
                this preprocessor's `pad_token_id`).
        """
        if (texts is None) == (directory is None):
            raise ValueError(
                "Pass exactly one of `texts` and `directory`. Received: "
                f"texts={'None' if texts is None else 'a value'}, "
                f"directory={directory!r}"
            )
        if directory is not None:
            texts = text_utils.read_text_files(directory)
        _check_texts(texts)
        documents = self.tokenize_documents(texts, keep_empty=True)
        kept = [i for i, d in enumerate(documents) if len(d)]
        if not kept:
            raise ValueError("Every text is empty: there is nothing to stream.")
        kwargs.setdefault("pad_id", self.pad_token_id)
        if segment_length is None:
            segment_length = self.sequence_length
        dataset = StreamingDataset(
            [documents[i] for i in kept], batch_size, segment_length, **kwargs
        )
        # Empty texts are not streamed; document indices (`positions()`,
        # `stream_documents`) still refer to the caller's list.
        dataset._renumber_documents(kept)
        return dataset

    def generate_preprocess(self, x, sequence_length=None):
        """Prompts to `{"token_ids", "padding_mask"}` of `sequence_length`.

        Each prompt is left-aligned and padded on the right (no end token);
        `padding_mask` is True over the prompt.
        """
        prompts = [x] if isinstance(x, str) else list(x)
        documents = [
            np.asarray(text_utils._to_numpy(self.tokenizer(p)), np.int32).reshape(-1)
            for p in prompts
        ]
        longest = max(len(d) for d in documents) if documents else 0
        if sequence_length is None:
            sequence_length = self.sequence_length or longest
        if any(len(d) == 0 for d in documents):
            raise ValueError("A prompt is empty: generation needs at least one token.")
        if longest > sequence_length:
            raise ValueError(
                f"`max_length` ({sequence_length}) must be longer than the "
                f"longest prompt ({longest} tokens)."
            )
        token_ids = np.full((len(documents), sequence_length), self.pad_token_id, np.int32)
        padding_mask = np.zeros((len(documents), sequence_length), bool)
        for row, ids in enumerate(documents):
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def generate_postprocess(self, x):
        """`{"token_ids", "padding_mask"}` back to strings (padding dropped)."""
        token_ids = np.asarray(keras.ops.convert_to_numpy(x["token_ids"]))
        padding_mask = np.asarray(keras.ops.convert_to_numpy(x["padding_mask"]))
        texts = []
        for ids, mask in zip(token_ids, padding_mask):
            ids = ids[mask.astype(bool)]
            if self.end_token_id is not None:
                ids = ids[ids != self.end_token_id]
            texts.append(self._detokenize(ids))
        return texts

    def _detokenize(self, ids):
        value = self.tokenizer.detokenize(np.asarray(ids, np.int32))
        value = text_utils._to_numpy(value)
        if isinstance(value, np.ndarray):
            value = value.item() if value.ndim == 0 else value.tolist()
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    def call(self, x, sequence_length=None):
        """Texts to one training segment per text: `(x, y, sample_weight)`.

        Each row starts a new document (`reset` True); the target of token
        `t` is token `t + 1`. For streams longer than one segment use
        `streaming_dataset()`.
        """
        if sequence_length is None:
            sequence_length = self.sequence_length
        packed = self.generate_preprocess(
            x, None if sequence_length is None else sequence_length + 1
        )
        token_ids, mask = packed["token_ids"], packed["padding_mask"]
        inputs = {
            "token_ids": token_ids[:, :-1],
            "reset": np.ones((token_ids.shape[0],), bool),
        }
        return inputs, token_ids[:, 1:], mask[:, 1:].astype("float32")

    def get_config(self):
        config = super().get_config()  # The tokenizer, serialised.
        config.update(
            {
                "add_end_token": self.add_end_token,
                "pad_token_id": self.pad_token_id,
                "sequence_length": self.sequence_length,
            }
        )
        return config
