"""Several processes training one model (issue: beyond one machine).

The two-process runs start `examples/multi_process_train.py` twice on this
machine (loopback only: coordinator and workers on 127.0.0.1, one CPU device
per process), under the engine of the backend being tested: JAX via
`keras.distribution.initialize()` (jax.distributed, gloo collectives),
TensorFlow via `MultiWorkerMirroredStrategy` with a two-worker `TF_CONFIG`.
The reference is the same script with `--num-processes 1`, run in this
process on the same global batch. Skipped where loopback ports cannot be
opened, and on PyTorch (Keras has no multi-process engine for it).
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import repo_paths

from keras_infformer import distribution
from keras_infformer.data import StreamingDataset

BACKEND = keras.backend.backend()
ROOT = repo_paths.ROOT
SCRIPT = os.path.join(ROOT, "examples", "multi_process_train.py")
# Losses and memory of 2 processes vs 1: float32 sums in another order.
TOLERANCE = 1e-5


def _free_ports(count):
    """`count` consecutive free loopback ports (TF: coordinator port + i)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    return None


def _loopback_available():
    return _free_ports(2) is not None


def multi_process(test):
    """Marked `multiprocess`; skipped without an engine or loopback ports."""
    test = pytest.mark.multiprocess(test)
    return pytest.mark.skipif(
        BACKEND not in ("jax", "tensorflow") or not _loopback_available(),
        reason="needs JAX or TensorFlow and loopback ports",
    )(test)


def _launch(out, num_processes=2, extra=None, timeouts=None):
    """Start one process per rank; returns the Popen objects."""
    port = _free_ports(num_processes)
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    # One CPU device per process: no forced device count (the suite's other
    # XLA flags, conftest.py's, stay).
    env["XLA_FLAGS"] = " ".join(
        flag
        for flag in env.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count")
    )
    procs = []
    for rank in range(num_processes):
        command = [
            sys.executable,
            SCRIPT,
            "--backend",
            BACKEND,
            "--process-id",
            str(rank),
            "--num-processes",
            str(num_processes),
            "--coordinator",
            f"127.0.0.1:{port}",
            "--out",
            str(out),
        ]
        command += (extra or {}).get(rank, [])
        procs.append(
            subprocess.Popen(
                command,
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _wait(procs, limit):
    outputs = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"a process ran past {limit} s")
        outputs.append((proc.returncode, stdout, stderr))
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process in this process, then two processes that also restore
    the one-process checkpoint."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import multi_process_train
    finally:
        sys.path.pop(0)
    one = tmp_path_factory.mktemp("one_process")
    multi_process_train.main(["--backend", BACKEND, "--num-processes", "1", "--out", str(one)])
    two = tmp_path_factory.mktemp("two_processes")
    procs = _launch(two, extra={r: ["--restore", str(one / "model.keras")] for r in (0, 1)})
    outputs = _wait(procs, 240)
    for rank, (code, _, stderr) in enumerate(outputs):
        assert code == 0, f"process {rank} failed:\n{stderr[-3000:]}"

    def load(folder, rank):
        with open(folder / f"result_{rank}.json") as f:
            return json.load(f)

    return {
        "one": load(one, 0),
        "two": [load(two, 0), load(two, 1)],
        "one_state": dict(np.load(one / "state.npz")),
        "two_state": dict(np.load(two / "state.npz")),
        "two_restored": dict(np.load(two / "restored_state.npz")),
        "two_checkpoint": two / "model.keras",
    }


@multi_process
def test_two_processes_compute_what_one_does(runs):
    one, two = runs["one"], runs["two"]
    assert [r["process_index"] for r in two] == [0, 1]
    assert [r["num_processes"] for r in two] == [2, 2]
    # Each process fed its own half of the global batch of 4.
    assert [r["rows"] for r in two] == [[0, 2], [2, 4]]
    assert one["rows"] == [0, 4]
    assert two[0]["num_steps"] == two[1]["num_steps"] == one["num_steps"] > 4
    losses = np.array(one["losses"])
    assert len(losses) == one["num_steps"]
    for result in two:
        np.testing.assert_allclose(result["losses"], losses, rtol=0, atol=TOLERANCE)
    # The losses move from step to step (random tokens: no trend to expect),
    # so equal curves are not equal by construction.
    assert np.all(np.isfinite(losses)) and np.ptp(losses) > 1e-2
    assert set(runs["two_state"]) == set(runs["one_state"])
    for name, value in runs["one_state"].items():
        assert runs["two_state"][name].shape == value.shape  # Every row gathered.
        np.testing.assert_allclose(runs["two_state"][name], value, rtol=0, atol=TOLERANCE)
    # Not an empty memory: the comparison means something.
    assert np.abs(runs["one_state"]["layer_0_ltm_coefficients"]).max() > 0.1


@multi_process
def test_one_process_checkpoint_restores_in_two(runs):
    # Every process holds its own rows of the loaded memory...
    assert [r["restored_rows_match"] for r in runs["two"]] == [True, True]
    # ...and together every row, as saved.
    for name, value in runs["one_state"].items():
        np.testing.assert_array_equal(runs["two_restored"][name], value)


@multi_process
def test_two_process_checkpoint_restores_in_one(runs):
    model = keras.saving.load_model(runs["two_checkpoint"])
    state = {k: keras.ops.convert_to_numpy(v) for k, v in model.get_state().items()}
    assert set(state) == set(runs["two_state"])
    for name, value in runs["two_state"].items():
        np.testing.assert_array_equal(state[name], value)


@multi_process
def test_a_killed_process_stops_the_other_with_a_clear_error(tmp_path):
    timeout = 45
    procs = _launch(
        tmp_path,
        extra={0: ["--timeout", str(timeout)], 1: ["--die-at-step", "2"]},
    )
    # The survivor must end on its own (a hang fails `_wait`) ...
    (code0, _, stderr0), (code1, _, _) = _wait(procs, 240)
    assert code1 == 3  # Died as told.
    # ... with the one-line error and exit status 2.
    assert code0 == 2, stderr0[-3000:]
    assert "[process 0] ERROR: training stopped:" in stderr0
    assert not (tmp_path / "result_0.json").exists()


def test_the_watchdog_spares_one_process_and_the_first_compilation():
    """Issue 23 item 19: the watchdog ran for one process too, its clock
    counting the imports and the first compilation (the default run took
    62 s against `--timeout 60` and was killed)."""
    import threading
    import time

    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import multi_process_train
    finally:
        sys.path.pop(0)
    one = multi_process_train.parse_args(["--num-processes", "1", "--timeout", "0.01"])
    threads = threading.active_count()
    watchdog = multi_process_train.start_watchdog(one)
    assert not isinstance(watchdog, multi_process_train.Watchdog)
    assert threading.active_count() == threads
    failures = []
    watchdog = multi_process_train.Watchdog(
        0.2, 0, startup_timeout=1.5, on_fail=lambda *args: failures.append(args)
    )
    time.sleep(0.8)  # Past `timeout`, within the first step's allowance.
    assert not failures
    watchdog.tick("step 0")
    time.sleep(0.8)  # Past `timeout` after a finished step: stopped.
    assert failures and "after step 0" in failures[0][1]
    watchdog.stop()
    two = multi_process_train.parse_args(["--num-processes", "2"])
    assert two.startup_timeout >= 10 * two.timeout


# -- in this process: the data side ------------------------------------------------


def _documents():
    rng = np.random.default_rng(3)
    return [rng.integers(1, 50, size=n) for n in rng.integers(3, 60, size=11)]


@pytest.mark.parametrize("num_processes", [2, 4])
def test_each_process_reads_its_block_of_the_global_rows(num_processes):
    whole = StreamingDataset(_documents(), batch_size=8, segment_length=8)
    assert whole.process_rows == (0, 8) and whole.local_batch_size == 8
    rows = 8 // num_processes
    parts = [
        StreamingDataset(
            _documents(),
            batch_size=8,
            segment_length=8,
            num_processes=num_processes,
            process_index=p,
        )
        for p in range(num_processes)
    ]
    for p, part in enumerate(parts):
        assert part.process_rows == (p * rows, (p + 1) * rows)
        assert part.local_batch_size == rows and part.batch_size == 8
        assert len(part) == len(whole)  # Every process runs every step.
        assert part.stream_documents == whole.stream_documents
    for step in range(len(whole)):
        expected = whole[step]
        got = [part[step] for part in parts]
        for key in ("token_ids", "reset"):
            np.testing.assert_array_equal(
                np.concatenate([g[0][key] for g in got]), expected[0][key]
            )
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), expected[1])
        np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), expected[2])
        for which in range(2):
            np.testing.assert_array_equal(
                np.concatenate([part.positions(step)[which] for part in parts]),
                whole.positions(step)[which],
            )


def test_process_arguments_are_checked():
    docs = _documents()
    with pytest.raises(
        ValueError, match=r"multiple of the number of processes.*batch_size=6.*num_processes=4"
    ):
        StreamingDataset(docs, batch_size=6, segment_length=8, num_processes=4, process_index=0)
    with pytest.raises(
        ValueError, match=r"process_index.*Received: process_index=2 with num_processes=2"
    ):
        StreamingDataset(docs, batch_size=4, segment_length=8, num_processes=2, process_index=2)
    with pytest.raises(ValueError, match=r"both.*num_processes=2, process_index=None"):
        StreamingDataset(docs, batch_size=4, segment_length=8, num_processes=2)
    with pytest.raises(TypeError, match="num_processes"):
        StreamingDataset(docs, batch_size=4, segment_length=8, num_processes=1.5, process_index=0)


def test_one_process_owns_every_row():
    assert distribution.num_processes() == 1
    assert distribution.process_index() == 0
    assert distribution.process_rows(6) == (0, 6)


def test_the_text_pipeline_reads_this_process_rows():
    import keras_infformer as kif

    preprocessor = kif.InfiniteFormerCausalLMPreprocessor()
    texts = [f"document {i} " * (3 + 2 * i) for i in range(7)]
    whole = preprocessor.streaming_dataset(texts, batch_size=4, segment_length=8)
    parts = [
        preprocessor.streaming_dataset(
            texts, batch_size=4, segment_length=8, num_processes=2, process_index=p
        )
        for p in range(2)
    ]
    assert [part.process_rows for part in parts] == [(0, 2), (2, 4)]
    for step in range(len(whole)):
        np.testing.assert_array_equal(
            np.concatenate([part.get_batch(step)[0]["token_ids"] for part in parts]),
            whole.get_batch(step)[0]["token_ids"],
        )
