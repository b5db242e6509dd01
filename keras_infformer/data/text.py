"""Text in, token streams out: read documents and tokenize them."""

import os

import numpy as np


def read_text_files(directory, max_files=None):
    """The `.txt` documents of a directory and its subfolders, as strings.

    One document per file, in the sorted order of Keras'
    `keras.utils.text_dataset_from_directory` (no shuffling), so every run
    sees the same documents in the same order. Bytes that are not valid
    UTF-8 become replacement characters.

    Args:
        directory: str. The folder to read.
        max_files: optional int. Keep the first `max_files` files only.

    Returns:
        A list of strings, one per file.
    """
    import keras

    if not isinstance(directory, (str, os.PathLike)) or not os.path.isdir(directory):
        raise ValueError(
            "`directory` must be an existing directory of `.txt` files. "
            f"Received: directory={directory!r}"
        )
    try:
        dataset = keras.utils.text_dataset_from_directory(
            directory, labels=None, batch_size=None, shuffle=False, verbose=False
        )
    except ValueError as e:  # Keras' own message when nothing matches.
        raise ValueError(
            f"`directory` holds no `.txt` file. Received: directory={directory!r}"
        ) from e
    if max_files is not None:
        dataset = dataset.take(int(max_files))
    return [bytes(item).decode("utf-8", errors="replace") for item in dataset.as_numpy_iterator()]


def tokenize_documents(tokenizer, texts, append_id=None, keep_empty=False):
    """Each text as a 1-D int32 array of token ids (empty texts dropped).

    Args:
        tokenizer: a `keras_hub.tokenizers.Tokenizer` (or any callable that
            maps a string to a sequence of ids).
        texts: list of str.
        append_id: optional int appended to every document (e.g. an end
            token, so that a model learns where documents stop).
        keep_empty: bool. Keep an empty array for each empty text, so that
            the i-th array is the i-th text's.
    """
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(
            f"`texts` must be a list of strings. Received: texts of type {type(texts).__name__}"
        )
    documents = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"`texts` must hold strings only. Received {type(text).__name__} at index {index}"
            )
        ids = np.asarray(_to_numpy(tokenizer(text)), dtype=np.int64).reshape(-1)
        if append_id is not None:
            ids = np.append(ids, int(append_id))
        if ids.size or keep_empty:
            documents.append(ids.astype(np.int32))
    return documents


def _to_numpy(x):
    if hasattr(x, "numpy"):
        return x.numpy()
    try:
        import keras

        return keras.ops.convert_to_numpy(x)
    except Exception:
        return np.asarray(x)


def split_documents(items, held_out_fraction, seed=0):
    """A seeded split by document: `(train_indices, held_out_indices)`.

    No document is in both; the same seed gives the same split.
    """
    if not 0.0 < float(held_out_fraction) < 1.0:
        raise ValueError(
            "`held_out_fraction` must be in (0, 1). Received: "
            f"held_out_fraction={held_out_fraction!r}"
        )
    count = len(items)
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, int(round(count * float(held_out_fraction))))
    if held >= count:
        raise ValueError(
            f"Cannot split {count} documents with held_out_fraction="
            f"{held_out_fraction}: nothing would be left to train on."
        )
    return sorted(order[held:].tolist()), sorted(order[:held].tolist())
