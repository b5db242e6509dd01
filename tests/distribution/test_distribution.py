"""Stateful memory on several devices (keras_infformer.distribution).

The multi-device runs need simulated devices set up before the backend
starts, so each runs tests/distribution/distributed_fit_script.py in its own process:
JAX with 2 and 4 host CPU devices (`ModelParallel` + `layout_map`),
TensorFlow with 2 logical CPU devices (`MirroredStrategy`). Each fits the
same small InfiniteFormerLM on one device and distributed, from the same
weights, and reports losses, memory, layouts, a per-row reset check and
`.keras` round trips; the tests below check that report. The other tests
run in this process on one device.

PyTorch: Keras 3 has no multi-device engine for it (`keras.distribution`
is implemented for JAX, `tf.distribute` is TensorFlow's), so the
multi-device tests skip there.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_infformer import distribution, memory
from keras_infformer.data import StreamingDataset
from keras_infformer.models import InfiniteFormerLM

BACKEND = keras.backend.backend()
HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "distributed_fit_script.py")
TOLERANCE = 1e-5


def _lm(batch_size=4, **kwargs):
    config = dict(
        vocabulary_size=32,
        segment_length=8,
        batch_size=batch_size,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        sticky_memories=True,
        compressed_memory_length=4,
        dropout=0.0,
    )
    config.update(kwargs)
    return InfiniteFormerLM(**config)


# -- one device, this process --------------------------------------------------


def test_batch_must_split_evenly():
    assert distribution.check_batch_shards(8, 4) == 4
    with pytest.raises(ValueError, match=r"multiple of the number of devices.*\(3\)"):
        distribution.check_batch_shards(8, 3)
    # Without a distribution there is one shard and nothing changes.
    assert distribution.num_batch_shards() == 1
    assert distribution.per_replica_batch(5) == 5


def test_streaming_dataset_refuses_indivisible_batch():
    documents = [np.arange(1, 30), np.arange(40, 50), np.arange(60, 90)]
    dataset = StreamingDataset(documents, batch_size=4, segment_length=8, num_shards=2)
    assert dataset.num_shards == 2
    assert StreamingDataset(documents, batch_size=3, segment_length=8).num_shards == 1
    with pytest.raises(ValueError, match=r"StreamingDataset must be a multiple.*batch_size=4"):
        StreamingDataset(documents, batch_size=4, segment_length=8, num_shards=3)
    with pytest.raises(ValueError, match="multiple"):
        StreamingDataset.from_array(np.arange(1, 100), 4, 8, num_shards=3)


def test_memory_variables_are_found_by_the_layout_rules():
    """Every memory variable (and nothing else) matches a layout rule of its
    rank, so a new memory variable cannot be forgotten by `layout_map`."""
    from keras_infformer.layers import CompressiveMemory, ContinuousLTM

    model = _lm()
    ltm = ContinuousLTM(num_basis=8, num_samples=8)
    ltm.build((4, 8, 4))
    cmem = CompressiveMemory(memory_length=4)
    cmem.build((4, 8, 4))
    patterns = memory.DECLARED_STATES.path_patterns()
    variables = model.variables + ltm.variables + cmem.variables
    memory_variables = [v for v in variables if memory.is_memory_variable(v)]
    assert len(memory_variables) == 8 + 3 + 2
    for variable in variables:
        matches = [
            rank for rank, pattern in patterns.items() if re.fullmatch(pattern, variable.path)
        ]
        if memory.is_memory_variable(variable):
            assert matches == [len(variable.shape)], variable.path
            assert not variable.trainable and variable.dtype == "float32"
        else:
            assert matches == [], variable.path
    # The state dict names are unchanged: they come from state_spec.
    assert set(model.get_state()) == set(model.state_spec())


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution layouts: JAX")
def test_layout_map_rules_compose_with_user_rules():
    devices = keras.distribution.list_devices()[:1]
    mesh = keras.distribution.DeviceMesh((1,), ["batch"], devices)
    base = keras.distribution.LayoutMap(mesh)
    base["token_embedding/embeddings"] = (None, "batch")
    layout_map = distribution.layout_map(mesh, base=base)
    # The memory rules follow the state names that memory layers declare
    # when they are built, also after the map was made (the usual order).
    from keras_infformer.layers import CompressiveMemory, ContinuousLTM

    _lm()
    ContinuousLTM(num_basis=8, num_samples=8).build((4, 8, 4))
    CompressiveMemory(memory_length=4).build((4, 8, 4))
    assert layout_map["token_embedding/embeddings"].axes == (None, "batch")
    assert layout_map["decoder_layer_0/stm"].axes == ("batch", None, None)
    assert layout_map["decoder_layer_3/ltm_density"].axes == ("batch", None)
    assert layout_map["decoder_layer_0/ltm_filled"].axes == ("batch",)
    assert layout_map["continuous_ltm/coefficients"].axes == ("batch", None, None)
    assert layout_map["compressive_memory/mask"].axes == ("batch", None)
    assert layout_map["decoder_layer_0/query/kernel"] is None
    assert layout_map["decoder_layer_0/stm"].device_mesh is mesh
    with pytest.raises(ValueError, match="batch_dim_name"):
        distribution.layout_map(mesh, batch_dim_name="data")
    model_mesh = keras.distribution.DeviceMesh((1, 1), ["data", "model"], devices)
    assert distribution.layout_map(model_mesh)["x/stm"].axes == ("data", None, None)


def test_single_device_save_and_state_unchanged(tmp_path):
    model = _lm()
    tokens = np.random.default_rng(0).integers(0, 32, (4, 8)).astype("int32")
    model({"token_ids": tokens, "reset": np.ones((4,), bool)})
    state = {k: keras.ops.convert_to_numpy(v) for k, v in model.get_state().items()}
    path = str(tmp_path / "lm.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for k, v in loaded.get_state().items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), state[k], err_msg=k)
    model.reset_state()
    model.set_state(state)
    for k, v in model.get_state().items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), state[k], err_msg=k)


# -- several simulated devices, own processes ----------------------------------


def _doc_examples():
    """The runnable examples of "Training on several devices", by backend."""
    root = os.path.dirname(HERE)
    examples = []
    for name in ("docs/distribution.md", "README.md"):
        path = os.path.join(root, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            examples += re.findall(
                r"<!-- distribution-example: (\w+) -->\s*```python\n(.*?)```",
                text,
                flags=re.S,
            )
    return examples


@pytest.mark.slow
def test_documented_example_runs(tmp_path):
    examples = {}
    for backend, code in _doc_examples():
        examples.setdefault(backend, code)  # README and docs may both hold it.
    if BACKEND not in examples:
        pytest.skip(f"no multi-device example for the {BACKEND} backend")
    script = tmp_path / "example.py"
    script.write_text(examples[BACKEND], encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


_RUNS = {}


def _run(backend, devices, tmp_dir):
    """The report of one distributed run (cached per backend and devices)."""
    key = (backend, devices)
    if key not in _RUNS:
        out = os.path.join(tmp_dir, f"{backend}_{devices}.json")
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.run(
            [sys.executable, SCRIPT, "--backend", backend, "--devices", str(devices), "--out", out],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert proc.returncode == 0, (
            f"{backend} on {devices} devices failed:\n{proc.stderr[-4000:]}"
        )
        with open(out) as f:
            _RUNS[key] = json.load(f)
    return _RUNS[key]


# JAX: 4 simulated devices (2 rows each) cover the 2-device layout too and
# keep the suite's time in bounds; `distributed_fit_script.py --devices 2`
# runs the other case by hand.
_CASES = {
    "jax": [4],
    "tensorflow": [2],
}


def _cases():
    if BACKEND not in _CASES:
        return [
            pytest.param(
                None,
                marks=pytest.mark.skip(
                    reason=f"no multi-device engine for the {BACKEND} backend in "
                    "Keras 3 (keras.distribution: JAX; tf.distribute: TensorFlow)"
                ),
            )
        ]
    return [
        pytest.param(n, id=f"{BACKEND}-{n}dev", marks=pytest.mark.slow) for n in _CASES[BACKEND]
    ]


@pytest.fixture(params=_cases())
def report(request, tmp_path_factory):
    return _run(BACKEND, request.param, str(tmp_path_factory.getbasetemp()))


def test_distributed_fit_equals_single_device(report):
    assert len(report["multi_losses"]) == len(report["single_losses"]) > 1
    np.testing.assert_allclose(
        report["multi_losses"], report["single_losses"], rtol=0, atol=TOLERANCE
    )
    assert report["loss_max_diff"] <= TOLERANCE
    assert report["memory_max_diff"] <= TOLERANCE, report["memory_max_diff_by_key"]
    assert report["weights_max_diff"] <= TOLERANCE
    # Every kind of memory took part (and moved).
    kinds = {k.split("_", 2)[2] for k in report["memory_max_abs"]}
    assert kinds == {
        "stm",
        "stm_mask",
        "cmem",
        "cmem_mask",
        "ltm_coefficients",
        "ltm_filled",
        "ltm_max_abs",
        "ltm_density",
    }
    assert all(v > 0 for v in report["memory_max_abs"].values())


def test_memory_lives_on_the_devices_of_its_rows(report):
    devices = report["devices"]
    batch = report["batch_size"]
    for layout_key in ("layouts", "loaded_distributed_layouts", "layers_layouts"):
        layouts = report[layout_key]
        assert layouts, layout_key
        for path, layout in layouts.items():
            assert layout["num_shards"] == devices, (layout_key, path)
            assert len(set(layout["devices"])) == devices, (layout_key, path)
            (shard_shape,) = layout["shard_shapes"]
            assert shard_shape[0] == batch // devices, (layout_key, path)
            if report["backend"] == "jax":
                # Sharded on the batch axis, each device holding its rows.
                assert layout["shape"][0] == batch
                assert layout["spec"] == ["batch"] + [None] * (len(shard_shape) - 1)
                assert shard_shape[1:] == layout["shape"][1:]
            else:
                # One per-replica variable of the per-replica rows each.
                assert layout["synchronization"] == "on_read"
                assert layout["shape"] == shard_shape


def test_per_row_reset_under_distribution(report):
    reset = report["reset"]
    assert reset["max_diff_vs_single"] <= TOLERANCE
    assert reset["max_diff_reset_rows_vs_fresh"] <= TOLERANCE
    assert reset["min_diff_kept_rows_vs_fresh"] > 1e-3


def test_standalone_stateful_layers_under_distribution(report):
    assert report["layers_max_diff"] <= TOLERANCE
    assert set(report["layers_layouts"]) == {
        "ltm/coefficients",
        "ltm/filled",
        "ltm/max_abs",
        "cmem/memory",
        "cmem/mask",
    }


def test_saving_keeps_every_row(report):
    batch = report["batch_size"]
    assert all(shape[0] == batch for shape in report["saved_state_shapes"].values())
    assert report["loaded_distributed_max_diff"] == 0.0
    assert report["loaded_single_max_diff"] == 0.0


def test_reset_state_and_set_state_reach_every_row(report):
    assert report["reset_state_max_diff"] == 0.0
    assert report["set_state_max_diff"] == 0.0


def test_indivisible_batch_is_refused(report):
    devices = report["devices"]
    for key in ("dataset_error", "model_error"):
        message = report[key]
        assert message is not None, key
        assert f"multiple of the number of devices the batch is split over ({devices})" in message
        assert f"batch_size={devices + 1}" in message
    assert "decoder_layer_0" in report["model_error"]
