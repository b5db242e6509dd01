"""Long memory really helps: the far-recall task of benchmarks/recall_task.py.

A document is a key segment, filler longer than a Transformer-XL stack can
see, then a query segment whose target is the key. Checked on every
backend:
- reach (deterministic): the ∞-former's logits at the query change when the
  far-back key changes; the Transformer-XL baseline's (the same model with
  use_long_term_memory=False) do not change at all;
- learning: after a short training the ∞-former answers well above chance
  (1 / num_keys), the baseline does not.
The full comparison (timings, more steps) is `benchmarks/recall_task.py`.
"""

import importlib.util
import os

import keras
import numpy as np
import pytest
import repo_paths

from keras_infformer.models import InfiniteFormerLM

BACKEND = keras.backend.backend()
SEGMENT = 8
BATCH = 4

_PATH = os.path.join(repo_paths.BENCHMARKS, "recall_task.py")
_spec = importlib.util.spec_from_file_location("recall_task", _PATH)
recall_task = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recall_task)


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Tiny tensors: PyTorch's intra-op threads only add contention (on a
    busy 2-core machine a training step gets ~20x slower). Restored after."""
    if BACKEND != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# One task and one pair of models for the module: each model's compiled
# predict (and train) step is then built once, which keeps JAX fast.
TASK = recall_task.RecallTask(
    num_keys=4,
    filler_segments=2,
    segment_length=SEGMENT,
    filler_vocabulary=12,
    key_mode="segment",
)
_MODELS = {}


def _model(use_ltm, zero_memory_output=True):
    """A 1-block LM with memory_length = L: the Transformer-XL baseline
    (use_ltm=False) sees exactly one segment back. `zero_memory_output=False`
    draws the memory's output projection (the paper's initialisation)."""
    if (use_ltm, zero_memory_output) not in _MODELS:
        keras.utils.set_random_seed(0)
        model = InfiniteFormerLM(
            vocabulary_size=TASK.vocabulary_size,
            segment_length=SEGMENT,
            batch_size=BATCH,
            num_layers=1,
            hidden_dim=16,
            num_heads=2,
            intermediate_dim=32,
            memory_length=SEGMENT,
            use_long_term_memory=use_ltm,
            num_basis=32,
            basis_widths=(0.05, 0.1),
            num_samples=32,
            zero_memory_output=zero_memory_output,
            dropout=0.0,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(1e-2, global_clipnorm=1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        _MODELS[use_ltm, zero_memory_output] = model
    return _MODELS[use_ltm, zero_memory_output]


def _query_logits(model, tokens):
    """Stream (BATCH, T) tokens; logits of the last (query) segment."""
    model.reset_state()
    for s in range(tokens.shape[1] // SEGMENT):
        segment = tokens[:, s * SEGMENT : (s + 1) * SEGMENT]
        logits = model.predict_on_batch({"token_ids": segment, "reset": np.full((BATCH,), s == 0)})
    return np.asarray(logits, np.float32)


def test_task_layout():
    task = recall_task.RecallTask(
        num_keys=4,
        filler_segments=3,
        segment_length=SEGMENT,
        filler_vocabulary=10,
        key_mode="segment",
    )
    rng = np.random.default_rng(0)
    tokens, targets, weights = task.document(rng, key=3)
    assert tokens.shape == (5 * SEGMENT,)
    assert np.all(tokens[:SEGMENT] == 3)
    assert np.all(tokens[-SEGMENT:] == task.query)
    filler = tokens[SEGMENT:-SEGMENT]
    assert filler.min() >= task.filler_low and filler.max() < task.vocabulary_size
    assert np.all(targets[-SEGMENT:] == 3) and np.all(weights[-SEGMENT:] == 1)
    assert np.all(weights[:-SEGMENT] == 0)
    # Staggered rows: every row resets at step 0; a cut first document
    # (no key) carries no loss; each answer's key is in its document.
    batches = list(task.batches(rng, batch_size=3, num_steps=15))
    assert np.all(batches[0][0]["reset"])
    tokens = np.concatenate([x["token_ids"] for x, _, _ in batches], axis=1)
    targets = np.concatenate([y for _, y, _ in batches], axis=1)
    weights = np.concatenate([w for _, _, w in batches], axis=1)
    resets = np.stack([x["reset"] for x, _, _ in batches], axis=1)
    D = task.document_segments
    for row in range(3):
        assert np.all(weights[row, : (D - row) * SEGMENT if row else 0] == 0)
        starts = np.flatnonzero(resets[row])
        for s in starts[1:] if row else starts:
            key = tokens[row, s * SEGMENT]
            end = (s + D) * SEGMENT
            if end <= tokens.shape[1]:
                assert np.all(targets[row, end - SEGMENT : end] == key)
                assert np.all(weights[row, end - SEGMENT : end] == 1)


def test_ltm_reaches_beyond_the_short_term_window_baseline_does_not():
    """Change only the far-back key: the ∞-former's query logits change,
    the Transformer-XL baseline's stay exactly the same.

    The key is 3 segments before the query (2 segments of filler between),
    out of the baseline's reach (1 block, memory_length = L: 1 segment back)
    whatever its weights are (this holds before and after training).
    """
    rng = np.random.default_rng(1)
    tokens = np.stack([TASK.document(rng)[0] for _ in range(BATCH)])
    changed = tokens.copy()
    changed[:, :SEGMENT] = (changed[:, :SEGMENT] % TASK.num_keys) + 1  # Other keys.
    assert np.all(changed[:, 0] != tokens[:, 0])

    # Untrained, with a drawn output projection: the default one starts at
    # zero, so an untrained model reads nothing yet.
    infinite = _model(use_ltm=True, zero_memory_output=False)
    a, b = _query_logits(infinite, tokens), _query_logits(infinite, changed)
    assert np.abs(a - b).max(axis=(1, 2)).min() > 1e-4  # Every row changes.

    baseline = _model(use_ltm=False)
    a, b = _query_logits(baseline, tokens), _query_logits(baseline, changed)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

    # Sanity: the baseline does react to a change inside its reach.
    near = tokens.copy()
    near[:, -2 * SEGMENT] = TASK.filler_low  # The last filler segment.
    near[:, -2 * SEGMENT] += tokens[:, -2 * SEGMENT] == TASK.filler_low
    c = _query_logits(baseline, near)
    assert np.abs(a - c).max() > 1e-4


def test_single_key_layout():
    """Precise recall: ONE key token at a random position of the first
    segment, filler everywhere else; the answer is that key."""
    task = recall_task.RecallTask(
        num_keys=4, filler_segments=3, segment_length=SEGMENT, filler_vocabulary=10
    )
    assert task.key_mode == "single"
    rng = np.random.default_rng(0)
    positions = set()
    for _ in range(40):
        tokens, targets, weights = task.document(rng)
        first = tokens[:SEGMENT]
        is_key = (first >= 1) & (first <= task.num_keys)
        assert is_key.sum() == 1
        positions.add(int(np.flatnonzero(is_key)[0]))
        assert np.all(first[~is_key] >= task.filler_low)
        assert np.all(tokens[SEGMENT:-SEGMENT] >= task.filler_low)
        assert np.all(targets[-SEGMENT:] == first[is_key][0])
        assert np.all(weights[-SEGMENT:] == 1) and np.all(weights[:-SEGMENT] == 0)
    assert len(positions) > SEGMENT // 2  # The key's position varies.
    with pytest.raises(ValueError, match="key_mode"):
        recall_task.RecallTask(4, 3, SEGMENT, 10, key_mode="one")


def _train(model, steps, seed):
    rng = np.random.default_rng(seed)
    for x, y, w in TASK.batches(rng, BATCH, steps):
        model.train_on_batch(x, y, sample_weight=w)


def _accuracy(model, documents_per_row, seed):
    model.reset_state()
    rng = np.random.default_rng(seed)
    steps = documents_per_row * TASK.document_segments
    hits = total = 0.0
    for x, y, w in TASK.batches(rng, BATCH, steps):
        logits = np.asarray(model.predict_on_batch(x), np.float32)
        hits += float(((logits.argmax(-1) == y) * w).sum())
        total += float(w.sum())
    return hits / total


@pytest.mark.slow
def test_ltm_learns_far_recall_baseline_stays_at_chance():
    """A few hundred steps of training: the ∞-former recalls the key, the
    baseline (which provably cannot see it, above) stays near chance."""
    steps = 240
    infinite = _model(use_ltm=True)
    _train(infinite, steps, seed=2)
    accuracy = _accuracy(infinite, documents_per_row=8, seed=3)
    assert accuracy > 0.75, accuracy  # Chance: 0.25.

    baseline = _model(use_ltm=False)
    _train(baseline, steps, seed=2)
    baseline_accuracy = _accuracy(baseline, documents_per_row=8, seed=3)
    assert baseline_accuracy < 0.5, baseline_accuracy
