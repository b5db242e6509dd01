"""The sorting-task systems and the example's CLI, at a tiny size."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_infformer
from keras_infformer.data import sorting

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import sorting_task  # noqa: E402

TINY = [
    "--lengths",
    "64",
    "--segment-length",
    "32",
    "--num-layers",
    "1",
    "--hidden-dim",
    "16",
    "--num-heads",
    "2",
    "--num-basis",
    "16",
    "--batch-size",
    "2",
    "--train-sequences",
    "4",
    "--epochs",
    "1",
    "--eval-sequences",
    "4",
    "--verbose",
    "0",
]


@pytest.mark.parametrize("kind", sorting_task.MODELS)
def test_three_systems_build_train_and_evaluate(kind, tmp_path):
    args = sorting_task.parse_args(TINY + ["--logdir", str(tmp_path)])
    model, result = sorting_task.run_one(kind, 64, args)
    assert 0.0 <= result["accuracy"] <= 1.0
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert result["parameters"] == trainable
    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in weights)
    # TensorBoard wrote event files.
    assert any("events" in p.name for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("extra", [[], ["--hidden-dim", "24", "--num-layers", "2"]])
def test_same_size_systems_share_block_window_and_size(extra):
    args = sorting_task.parse_args(TINY + extra)
    shapes, trainable, ffn = {}, {}, {}
    for kind in sorting_task.MODELS:
        model = sorting_task.build_model(kind, args)
        block = model.decoder_blocks[0]
        shapes[kind] = (block.memory_length, model.hidden_dim, model.num_layers)
        trainable[kind] = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        ffn[kind] = model.intermediate_dim
    assert len(set(shapes.values())) == 1
    # Equal trainable size: within one feed-forward unit of the ∞-former's.
    per_unit = args.num_layers * (2 * args.hidden_dim + 1)
    for kind in ("xl", "compressive"):
        assert abs(trainable[kind] - trainable["infformer"]) <= per_unit / 2
    # The ∞-former's extra memory projections make the baseline's FFN wider;
    # the compression convolution makes the compressive one's narrower.
    assert ffn["xl"] > ffn["infformer"] > ffn["compressive"]
    unequal = sorting_task.parse_args(TINY + extra + ["--no-equal-size"])
    assert sorting_task.build_model("xl", unequal).intermediate_dim == ffn["infformer"]


def test_compressive_memory_keeps_fixed_size():
    model = keras_infformer.InfiniteFormerLM(
        vocabulary_size=sorting.VOCABULARY_SIZE,
        segment_length=8,
        batch_size=2,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        memory_length=8,
        use_long_term_memory=False,
        compressed_memory_length=6,
        compression_rate=4,
    )
    state = model.get_initial_state(2)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    rng = np.random.default_rng(0)
    for step in range(12):  # 96 tokens through 6 compressed slots.
        tokens = rng.integers(0, 20, (2, 8)).astype("int32")
        _, state = model.step(tokens, np.full((2,), step == 0), state)
        assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    mask = keras.ops.convert_to_numpy(state["layer_0_cmem_mask"])
    np.testing.assert_array_equal(mask, np.ones_like(mask))


def test_density_images_callback_makes_images(tmp_path):
    args = sorting_task.parse_args(TINY + ["--sticky"])
    model = sorting_task.build_model("infformer", args)
    data = sorting.sorting_examples(2, 64, 32, seed=0)
    segments = {
        "token_ids": data["inputs"].transpose(1, 0, 2),
        "reset": np.arange(data["inputs"].shape[1])[:, None].repeat(2, 1) == 0,
    }
    callback = keras_infformer.callbacks.AttentionDensityImages(str(tmp_path), segments)
    callback.set_model(model)
    images = callback.compute_images()
    density = images["layer_0/ltm_attention_density"]
    assert density.shape == (1, 32, 128, 1)
    assert np.all(density >= 0) and np.all(density <= 1) and density.max() == 1
    assert "layer_0/sticky_histogram" in images


class _ScriptedModel:
    """Stands in for a trained model in the scorer: logits from a rule of
    the segment's token ids; records the resets it was called with."""

    def __init__(self, rule):
        self.rule = rule
        self.resets = []

    def predict_on_batch(self, inputs):
        token_ids = np.asarray(inputs["token_ids"])
        self.resets.append(np.asarray(inputs["reset"]).tolist())
        return self.rule(token_ids)


def _one_hot(ids):
    return np.eye(sorting.VOCABULARY_SIZE, dtype="float32")[ids]


def _oracle(token_ids):
    """Teacher forcing: the target at position i is the input at i + 1."""
    return _one_hot(np.concatenate([token_ids[:, 1:], token_ids[:, -1:]], axis=1))


def _constant(symbol):
    return lambda token_ids: _one_hot(np.full(token_ids.shape, symbol))


def test_scorer_gives_oracle_logits_full_marks():
    args = sorting_task.parse_args(TINY + ["--eval-sequences", "6"])
    model = _ScriptedModel(_oracle)
    assert sorting_task.evaluate(model, args, 64) == 1.0
    # 64 tokens + separator + 20 answers in segments of 32: 3 segments per
    # group of 2 sequences, 3 groups; memory reset at each group's start.
    assert model.resets == [[True, True], [False, False], [False, False]] * 3
    # The scorer reads the final segment's answer positions: an oracle
    # shifted by one position scores far less.
    late = _ScriptedModel(lambda ids: _one_hot(ids))
    assert sorting_task.evaluate(late, args, 64) < 0.5


@pytest.mark.parametrize("symbol", [0, 7, 19, sorting.SEPARATOR_ID, sorting.PAD_ID])
def test_scorer_gives_constant_logits_the_value_computed_by_hand(symbol):
    """Every true order is a permutation of the 20 symbols, so a model that
    always predicts the same symbol is right at exactly one rank of the 20:
    accuracy 1/20. Predicting the separator or the pad is never right."""
    args = sorting_task.parse_args(TINY + ["--eval-sequences", "6"])
    expected = 1.0 / 20 if symbol < sorting.NUM_SYMBOLS else 0.0
    accuracy = sorting_task.evaluate(_ScriptedModel(_constant(symbol)), args, 64)
    assert accuracy == pytest.approx(expected, abs=1e-12)
    # All-equal logits: argmax takes the first, symbol 0.
    flat = _ScriptedModel(lambda ids: np.zeros(ids.shape + (sorting.VOCABULARY_SIZE,)))
    assert sorting_task.evaluate(flat, args, 64) == pytest.approx(1.0 / 20, abs=1e-12)


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the command line as `make demo` runs it (JAX); the systems are trained "
    "on every backend by test_three_systems_build_train_and_evaluate",
)
def test_cli_runs_end_to_end(tmp_path):
    results = tmp_path / "sorting.json"
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "sorting_task.py"),
            *TINY,
            "--models",
            "infformer",
            "xl",
            "--logdir",
            str(tmp_path / "logs"),
            "--results",
            str(results),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(results.read_text())["runs"]
    assert {r["model"] for r in runs} == {"infformer", "xl"}
    assert "| infformer | 64 |" in proc.stdout
    help_text = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sorting_task.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    ).stdout
    assert "--paper" in help_text and "--sticky" in help_text


def _compressive_block(weight=1.0):
    block = keras_infformer.InfiniteFormerDecoder(
        intermediate_dim=32,
        num_heads=2,
        memory_length=8,
        use_long_term_memory=False,
        compressed_memory_length=4,
        compression_rate=4,
        reconstruction_weight=weight,
        dropout=0.0,
        stateful=False,
    )
    block.build((2, 8, 16))
    return block


def _weight(block, path):
    """The block's weight at `path` (relative to the block), by public path."""
    matches = [w for w in block.weights if w.path.split("/", 1)[1] == path]
    assert len(matches) == 1, (path, [w.path for w in block.weights])
    return matches[0]


def _numpy_reconstruction_loss(block, query, leaving, valid):
    """Rae et al.'s attention-reconstruction loss written out in float64."""
    to64 = lambda v: np.asarray(keras.ops.convert_to_numpy(v), np.float64)  # noqa: E731
    wk, wv = to64(_weight(block, "key/kernel")), to64(_weight(block, "value/kernel"))
    kernel = to64(_weight(block, "compressive_memory/compression/kernel"))  # (c, d, d)
    bias = to64(_weight(block, "compressive_memory/compression/bias"))  # (d,)
    c = kernel.shape[0]
    b, length, d = leaving.shape
    windows = leaving.reshape(b, length // c, c, d)
    compressed = np.einsum("bncd,cde->bne", windows, kernel) + bias

    def attend(memory):
        k = np.einsum("btd,dhk->bthk", memory, wk)
        v = np.einsum("btd,dhk->bthk", memory, wv)
        scores = np.einsum("bqhk,bthk->bhqt", query, k) / np.sqrt(query.shape[-1])
        p = np.exp(scores - scores.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return np.einsum("bhqt,bthk->bqhk", p, v)

    error = ((attend(leaving) - attend(compressed)) ** 2).mean(axis=(1, 2, 3))
    # Rows with nothing leaving count zero in the batch mean.
    return (error * valid).sum() / len(valid)


def test_attention_reconstruction_loss_matches_numpy(to_numpy):
    block = _compressive_block()
    rng = np.random.default_rng(0)
    query = rng.standard_normal((2, 8, 2, 8)).astype("float32")
    leaving = rng.standard_normal((2, 8, 16)).astype("float32")
    for valid in ([1.0, 1.0], [1.0, 0.0]):
        valid = np.asarray(valid, "float32")
        got = float(to_numpy(block.attention_reconstruction_loss(query, leaving, valid)))
        expected = _numpy_reconstruction_loss(
            block, query.astype(np.float64), leaving.astype(np.float64), valid
        )
        assert expected > 1e-3
        np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_attention_reconstruction_loss_splits_evenly_across_replicas(to_numpy):
    """Replicas holding equal halves of the batch, with different numbers of
    rows that have a block leaving, average to the whole batch's loss (what
    tf.distribute does with an `add_loss` value)."""
    block = _compressive_block()
    rng = np.random.default_rng(3)
    query = rng.standard_normal((4, 8, 2, 8)).astype("float32")
    leaving = rng.standard_normal((4, 8, 16)).astype("float32")
    valid = np.asarray([1.0, 1.0, 1.0, 0.0], "float32")

    def loss(rows):
        return float(
            to_numpy(block.attention_reconstruction_loss(query[rows], leaving[rows], valid[rows]))
        )

    whole = loss(slice(0, 4))
    halves = 0.5 * (loss(slice(0, 2)) + loss(slice(2, 4)))
    assert whole > 1e-3
    np.testing.assert_allclose(halves, whole, rtol=1e-5)


def test_attention_reconstruction_loss_trains_only_the_compression(gradients):
    block = _compressive_block()
    rng = np.random.default_rng(1)
    query = rng.standard_normal((2, 8, 2, 8)).astype("float32")
    leaving = rng.standard_normal((2, 8, 16)).astype("float32")
    compression = [
        _weight(block, "compressive_memory/compression/" + name) for name in ("kernel", "bias")
    ]
    held = [_weight(block, name + "/kernel") for name in ("key", "value", "query")]

    def loss(q, x):
        return block.attention_reconstruction_loss(q, x, np.ones((2,), "float32"))

    (g_kernel, g_bias, *g_held), (g_query, g_block) = gradients(
        loss, compression + held, [query, leaving]
    )
    assert np.abs(g_kernel).max() > 1e-4 and np.abs(g_bias).max() > 0
    for g in g_held + [g_query, g_block]:
        np.testing.assert_array_equal(g, 0.0)


def test_compressive_lm_adds_the_reconstruction_loss_in_training(to_numpy):
    def collected(model, tokens, reset, state, training):
        with keras.StatelessScope(collect_losses=True) as scope:
            _, new_state = model.step(tokens, reset, state, training=training)
        return [float(to_numpy(x)) for x in scope.losses], new_state

    rng = np.random.default_rng(2)
    tokens = [rng.integers(0, 20, (2, 8)).astype("int32") for _ in range(2)]
    for weight in (1.0, 0.0):
        model = keras_infformer.InfiniteFormerLM(
            vocabulary_size=20,
            segment_length=8,
            batch_size=2,
            num_layers=1,
            hidden_dim=16,
            num_heads=2,
            memory_length=8,
            dropout=0.0,
            use_long_term_memory=False,
            compressed_memory_length=4,
            compression_rate=4,
            reconstruction_weight=weight,
        )
        state = model.get_initial_state(2)
        first, state = collected(model, tokens[0], np.ones((2,), bool), state, True)
        second, _ = collected(model, tokens[1], np.zeros((2,), bool), state, True)
        inference, _ = collected(model, tokens[1], np.zeros((2,), bool), state, False)
        assert inference == []
        if weight == 0.0:
            assert first == [] and second == []
        else:
            # Nothing leaves the empty STM at the first step; a block does next.
            assert first == [0.0]
            assert len(second) == 1 and second[0] > 1e-4
    config = model.get_config()
    assert config["reconstruction_weight"] == 0.0
    assert keras_infformer.InfiniteFormerLM.from_config(config).reconstruction_weight == 0.0


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="checks the client script; the export from JAX is tested in test_export*",
)
def test_saved_model_sorts_through_decode_step_as_the_model_does(tmp_path):
    """`examples/sort_with_saved_model.py` generates the answer through
    `decode_step`; it must predict what the Keras model predicts when the
    last segment is re-sent whole with one more predicted symbol each time
    (greedy over the 20 symbols, every segment through `model.step`)."""
    import sort_with_saved_model

    args = sorting_task.parse_args(TINY + ["--logdir", str(tmp_path)])
    keras.utils.set_random_seed(3)
    model = sorting_task.build_model("infformer", args)
    path = keras_infformer.export_for_serving(model, tmp_path / "export")
    tokens, _ = sorting.generate_sequences(1, 64, seed=5)
    tokens = tokens[0]
    predicted, seconds = sort_with_saved_model.sort_sequence(path, tokens, 32)
    assert len(seconds) > sorting.NUM_SYMBOLS

    segment = 32
    stream_length = len(tokens) + 1 + sorting.NUM_SYMBOLS
    count = -(-stream_length // segment)
    stream = np.full(count * segment, sorting.PAD_ID, "int32")
    offset = len(stream) - stream_length
    stream[offset : offset + len(tokens)] = tokens
    stream[offset + len(tokens)] = sorting.SEPARATOR_ID
    segments = stream.reshape(count, segment)
    state = model.get_initial_state(1)
    for s in range(count - 1):
        _, state = model.step(segments[s][None], np.array([s == 0]), state)
    final = segments[-1].copy()
    first = segment - sorting.NUM_SYMBOLS - 1
    want = []
    for k in range(sorting.NUM_SYMBOLS):
        logits, _ = model.step(final[None], np.array([count == 1]), state)
        logits = keras.ops.convert_to_numpy(logits)[0, first + k, : sorting.NUM_SYMBOLS]
        want.append(int(np.argmax(logits)))
        if k + 1 < sorting.NUM_SYMBOLS:
            final[first + 1 + k] = want[-1]
    np.testing.assert_array_equal(predicted, want)
