"""keras_infformer.callbacks: TensorBoard density images with Keras' TensorBoard."""

import glob
import os
import warnings

import keras
import numpy as np
import pytest

import keras_infformer
from keras_infformer.callbacks import AttentionDensityImages
from keras_infformer.data import StreamingDataset

VOCAB, SEGMENT, BATCH = 32, 8, 2


def _model():
    keras.utils.set_random_seed(0)
    model = keras_infformer.InfiniteFormerLM(
        vocabulary_size=VOCAB,
        segment_length=SEGMENT,
        batch_size=BATCH,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        memory_length=SEGMENT,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        sticky_memories=True,
        dropout=0.0,
    )
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _dataset():
    rng = np.random.default_rng(0)
    # 3 steps per epoch: 3 is not a multiple of update_freq=50.
    documents = [rng.integers(1, VOCAB, size=n) for n in (24, 20)]
    return StreamingDataset(documents, batch_size=BATCH, segment_length=SEGMENT)


def _segments(dataset, count=2):
    steps = [dataset.get_batch(s)[0] for s in range(count)]
    return {
        "token_ids": np.stack([x["token_ids"] for x in steps]),
        "reset": np.stack([x["reset"] for x in steps]),
    }


def _events(directory):
    """{tag: sorted steps} of every summary under `directory`."""
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(event.step)
    return {tag: sorted(steps) for tag, steps in found.items()}


@pytest.mark.parametrize("density_first", [True, False], ids=["ours_first", "tb_first"])
@pytest.mark.parametrize("update_freq", ["epoch", 50])
def test_images_are_written_with_any_update_freq(tmp_path, update_freq, density_first):
    """Defect 11 of issue 12: with update_freq=50 the density images were
    silently dropped. They are written whatever Keras' TensorBoard
    condition is; Keras' own epoch scalars are its business (issue 24: no
    patch of TensorFlow's private summary state): with update_freq=50 and
    3 steps per epoch they are dropped (tensorflow/tensorflow#49109), and
    this callback says so once."""
    dataset = _dataset()
    log_dir = str(tmp_path)
    tensorboard = keras.callbacks.TensorBoard(log_dir, update_freq=update_freq)
    images = AttentionDensityImages(log_dir, _segments(dataset))
    callbacks = [images, tensorboard] if density_first else [tensorboard, images]
    model = _model()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        warnings.filterwarnings("ignore", message=".*[Ii]nput.*")
        model.fit(dataset, epochs=2, shuffle=False, callbacks=callbacks, verbose=0)
    ours = [w for w in caught if "49109" in str(w.message)]

    densities = _events(os.path.join(log_dir, "densities"))
    for tag in ("layer_0/ltm_attention_density", "layer_0/sticky_histogram"):
        assert densities.get(tag) == [0, 1], (tag, densities)
    train = _events(os.path.join(log_dir, "train"))
    if update_freq == "epoch":
        assert not ours
        assert train.get("epoch_loss") == [0, 1], train
    elif density_first:
        # Keras' condition is already active at our epoch end: the warning.
        assert len(ours) == 1, [str(w.message) for w in caught]
    # Nothing is left switched on or off after training.
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path / "after"))
    with writer.as_default():
        assert bool(tf.summary.should_record_summaries())


def test_user_record_if_is_respected_but_images_are_written(tmp_path):
    """Under a user's `record_if(False)` the images are still written, with
    a warning that epoch-end summaries are being dropped, and the user's
    condition is left as it was."""
    import tensorflow as tf

    dataset = _dataset()
    images = AttentionDensityImages(str(tmp_path), _segments(dataset))
    images.set_model(_model())
    images.set_params({"steps": 3, "epochs": 1})
    user_writer = tf.summary.create_file_writer(str(tmp_path / "user"))
    condition = lambda: False  # noqa: E731
    with user_writer.as_default(), tf.summary.record_if(condition):
        with pytest.warns(UserWarning, match=r"update_freq.*49109"):
            images.on_epoch_end(0)
        assert not bool(tf.summary.should_record_summaries())
    densities = _events(str(tmp_path / "densities"))
    assert densities.get("layer_0/ltm_attention_density") == [0]


def test_density_images_are_labelled_colour_figures_per_head(tmp_path):
    """Issue 23 item 10: the images were 128 x 64 grey grids (heads averaged,
    first row only, no axes). Now: a colour figure per block, one panel per
    head, for a chosen batch row, large enough for TensorBoard's default
    zoom; the histogram a bar chart."""
    import tensorflow as tf

    from keras_infformer.callbacks import attention_density_per_head

    dataset = _dataset()
    model = _model()
    images = AttentionDensityImages(str(tmp_path), _segments(dataset), row=1)
    images.set_model(model)
    figures = images.compute_figures()
    for tag in ("layer_0/ltm_attention_density", "layer_0/sticky_histogram"):
        image = figures[tag]
        assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[-1] == 3
        assert image.shape[1] >= 240 and image.shape[2] >= 400, image.shape
        channels = image[0].astype(int)
        assert (np.abs(channels[..., 0] - channels[..., 1]) > 40).mean() > 0.01  # colour
    # Two heads: the density figure is wider than the one-panel histogram.
    assert (
        figures["layer_0/ltm_attention_density"].shape[2]
        > figures["layer_0/sticky_histogram"].shape[2]
    )
    # The per-head densities drawn: the Gaussians of row 1, one per head.
    _, _, densities = model.step(
        _segments(dataset)["token_ids"][0],
        np.ones(BATCH, bool),
        model.get_initial_state(BATCH),
        return_density=True,
    )
    mu, sigma_sq = (keras.ops.convert_to_numpy(x) for x in densities[0])
    per_head = attention_density_per_head(mu, sigma_sq, row=1, num_points=64)
    assert per_head.shape == (2, SEGMENT, 64)
    t = (np.arange(64) + 0.5) / 64
    for head in range(2):
        for query in range(SEGMENT):
            m, v = float(mu[1, head, query]), float(sigma_sq[1, head, query])
            expected = np.exp(-((t - m) ** 2) / (2 * v)) / np.sqrt(2 * np.pi * v)
            np.testing.assert_allclose(per_head[head, query], expected, rtol=1e-6)
    # Written to TensorBoard as such.
    images.on_epoch_end(0)
    path = glob.glob(os.path.join(str(tmp_path), "densities", "events.out.tfevents.*"))[0]
    written = {
        value.tag: tf.io.decode_png(tf.make_tensor_proto(value.tensor).string_val[2]).shape
        for event in tf.compat.v1.train.summary_iterator(path)
        for value in event.summary.value
    }
    assert written["layer_0/ltm_attention_density"][-1] == 3
    assert written["layer_0/ltm_attention_density"][1] >= 400
    with pytest.raises(ValueError, match="row=2"):
        AttentionDensityImages(str(tmp_path), _segments(dataset), row=2)
