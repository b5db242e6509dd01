"""Training throughput on a GPU: tokens/s, step-time ratios and MFU.

Ready for the day a GPU is lent (none was when this was written: no number
in this repository comes from it yet). Trains with `model.fit` under
`keras.mixed_precision.set_global_policy("mixed_bfloat16")`, compiled
(`jit_compile=True`), on JAX and on TensorFlow, each backend in its own
process (`KERAS_BACKEND` set), two pairs measured side by side in the same
process, alternating round by round:

- `paper_lm`: the paper's sorting-run LM size (3 layers, width 300, 6 heads,
  segment = short-term memory = 1024, N = M = 512, τ 0.75, sticky memories,
  batch 8, byte vocabulary), against the Transformer-XL of the same size
  (`use_long_term_memory=False`);
- `gpt2_small`: `InfiniteFormerGPT2CausalLM` over a random keras-hub
  `GPT2Backbone` of GPT-2 small's shape (12 layers, width 768, 12 heads,
  vocabulary 50257; segment 512, N = M = 512, sticky, every weight trained,
  batch 8), against keras-hub's plain `GPT2CausalLM` over the same shape.

Per system: median step time (per round, from the end of `fit`'s first
step to the end of its last, waiting for the loss at both),
tokens/s, the median of the per-round ratios to the baseline, the last loss,
and the model FLOPs utilisation: FLOPs per token (an estimate, see
`flops_per_token`) × tokens/s over the device's bf16 dense peak (from
`PEAK_BF16_FLOPS` by device name; an unknown device gives `mfu: null`).
Writes `benchmarks/results/gpu_check.json`.

    python benchmarks/gpu_check.py              # needs a GPU; both backends
    make gpu-check                              # the same
    python benchmarks/gpu_check.py --backends jax   # one backend (a short slot);
    python benchmarks/gpu_check.py --backends tensorflow   # merged into the JSON
    python benchmarks/gpu_check.py --quick      # tiny shapes on the CPU (smoke test)

Each backend runs in its own process, allowed `--timeout` seconds (570 by
default, so that one backend fits a 10-minute slot; the time it needs on a
GPU has not been measured). A GPU run merges its backends into an existing
`gpu_check.json`, each backend's entry with its own device and date.

Without a GPU (and without `--quick`) it refuses (exit status 2) and writes
nothing: GPU numbers are never measured on a CPU. A backend whose framework
sees no GPU (e.g. a CPU-only `jaxlib`) is reported as an error for that
backend, with no numbers. `--quick` runs tiny shapes on the CPU, writes to a
temporary file by default, and its JSON says `"quick": true` and
`"device": "cpu"`: a check that the script works, not a measurement.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "gpu_check.json")
BACKENDS = ("jax", "tensorflow")

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by a substring of the
# device name (checked in this order). Vendors' data sheets.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3").
    ("A100", 312e12),
    ("L4", 121e12),
)

# The paper's sorting run (DESIGN.md §1.6; benchmarks/context_scaling.py's
# PAPER block), 3 layers, batch 8; byte vocabulary as the other benchmarks.
PAPER_LM = dict(
    vocabulary_size=256,
    segment_length=1024,
    batch_size=8,
    num_layers=3,
    hidden_dim=300,
    num_heads=6,
    intermediate_dim=1200,
    memory_length=1024,
    num_basis=512,
    num_samples=512,
    tau=0.75,
    sticky_memories=True,
    sticky_mode="random",
    dropout=0.1,
)
GPT2_SMALL = dict(
    vocabulary_size=50257,
    num_layers=12,
    num_heads=12,
    hidden_dim=768,
    intermediate_dim=3072,
    max_sequence_length=1024,
    dropout=0.1,
)
GPT2_MEMORY = dict(segment_length=512, batch_size=8, num_basis=512, num_samples=512)
SCHEDULE = dict(warmup_steps=3, rounds=5, steps_per_round=20)

QUICK_PAPER_LM = dict(
    PAPER_LM,
    vocabulary_size=32,
    segment_length=16,
    batch_size=2,
    num_layers=1,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    memory_length=16,
    num_basis=8,
    num_samples=8,
)
QUICK_GPT2 = dict(
    GPT2_SMALL,
    vocabulary_size=300,
    num_layers=1,
    num_heads=2,
    hidden_dim=32,
    intermediate_dim=64,
    max_sequence_length=32,
)
QUICK_GPT2_MEMORY = dict(segment_length=16, batch_size=2, num_basis=8, num_samples=8)
QUICK_SCHEDULE = dict(warmup_steps=1, rounds=2, steps_per_round=3)


def peak_flops(device_name):
    """The bf16 dense peak of a device by name, or `None` when unknown."""
    for key, flops in PEAK_BF16_FLOPS:
        if device_name and key.lower() in device_name.lower():
            return flops
    return None


def nvidia_gpus():
    """Names of the GPUs `nvidia-smi` lists (`[]` without one)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def flops_per_token(parameters, num_layers, hidden_dim, attended, ltm=None):
    """Training FLOPs per token, estimated analytically.

    `6 × parameters` (forward and backward matmuls; the tied token
    embedding counted once, as the output projection; position embeddings,
    which are looked up, left out) plus the attention scores and weighted
    sum, `12 × layers × width × attended` (`attended`: keys a query sees on
    average: the short-term memory plus half the causal segment). With a
    long-term memory (`ltm = (num_basis, num_samples, segment_length)`),
    per layer the continuous read, `12 × N × width` (scores and values,
    forward and backward), and the memory update once per segment (no
    gradient: forward only), reading M points and refitting M + L:
    `2 × (2M + L) × N × width / L`. (The memory's key and value projections
    act on N coefficients once per segment: counted in `6 × parameters`,
    which is exact for them when N = L.)
    """
    total = 6 * parameters + 12 * num_layers * hidden_dim * attended
    if ltm is not None:
        num_basis, num_samples, length = ltm
        total += num_layers * (
            12 * num_basis * hidden_dim
            + 2 * (2 * num_samples + length) * num_basis * hidden_dim / length
        )
    return float(total)


# -- one backend (the child process) ---------------------------------------------


def _device(quick):
    """`(kind, name)` of the device this backend computes on; refuses (exit
    3) when a GPU run finds none."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        name = gpus[0].device_kind if gpus else None
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        name = (
            tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else None
        )
    if quick:
        return "cpu", platform.processor() or platform.machine()
    if not gpus:
        print(
            f"gpu_check: the {backend} backend sees no GPU (for JAX, install "
            "a CUDA jaxlib, e.g. `pip install 'jax[cuda12]'`). No numbers "
            "are measured on a CPU.",
            file=sys.stderr,
        )
        sys.exit(3)
    return "gpu", name or "unknown GPU"


def _trainable_flop_parameters(model):
    """Trainable parameters that are multiplied per token (no position
    embedding table)."""
    import numpy as np

    return int(
        sum(
            int(np.prod(w.shape))
            for w in model.trainable_weights
            if "position_embedding" not in w.path
        )
    )


def _build_pair(pair, quick, jit_compile):
    """`{system: (model, make_batches)}`, the candidate first, its baseline
    second, plus the FLOP estimate settings per system."""
    import keras
    import numpy as np

    import keras_infformer as kif

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compile_(model):
        model.compile(
            optimizer=keras.optimizers.Adam(1e-4),
            loss=loss(),
            weighted_metrics=[],
            jit_compile=jit_compile,
        )

    systems = {}
    if pair == "paper_lm":
        settings = QUICK_PAPER_LM if quick else PAPER_LM
        batch, length, vocab = (
            settings["batch_size"],
            settings["segment_length"],
            settings["vocabulary_size"],
        )
        for name, overrides in (
            ("infformer_sticky", {}),
            ("transformer_xl", dict(use_long_term_memory=False, sticky_memories=False)),
        ):
            keras.utils.set_random_seed(0)
            model = kif.models.InfiniteFormerLM(**dict(settings, **overrides))
            compile_(model)
            ltm = None if overrides else (settings["num_basis"], settings["num_samples"], length)
            attended = settings["memory_length"] + (length + 1) / 2
            systems[name] = dict(model=model, ltm=ltm, attended=attended, inputs="reset")
        config = settings
        flop_shape = (settings["num_layers"], settings["hidden_dim"])
    else:
        import keras_hub

        backbone_settings = QUICK_GPT2 if quick else GPT2_SMALL
        memory = QUICK_GPT2_MEMORY if quick else GPT2_MEMORY
        batch, length, vocab = (
            memory["batch_size"],
            memory["segment_length"],
            backbone_settings["vocabulary_size"],
        )
        keras.utils.set_random_seed(0)
        model = kif.models.InfiniteFormerGPT2CausalLM.from_backbone(
            keras_hub.models.GPT2Backbone(**backbone_settings), finetune="all", **memory
        )
        compile_(model)
        systems["gpt2_memory"] = dict(
            model=model,
            ltm=(memory["num_basis"], memory["num_samples"], length),
            attended=(length + 1) / 2,
            inputs="reset",
        )
        keras.utils.set_random_seed(0)
        model = keras_hub.models.GPT2CausalLM(
            keras_hub.models.GPT2Backbone(**backbone_settings), preprocessor=None
        )
        compile_(model)
        systems["gpt2"] = dict(model=model, ltm=None, attended=(length + 1) / 2, inputs="mask")
        config = dict(backbone_settings, **memory)
        flop_shape = (backbone_settings["num_layers"], backbone_settings["hidden_dim"])

    rng = np.random.default_rng(0)

    def data(kind, steps, first):
        """`steps` batches of a random stream, as `fit` arrays (rows in
        order: the memory carries each row across batches)."""
        ids = rng.integers(0, vocab, (steps * batch, length + 1)).astype("int32")
        x, y = ids[:, :-1], ids[:, 1:]
        if kind == "mask":
            return {"token_ids": x, "padding_mask": np.ones_like(x, bool)}, y
        reset = np.zeros((steps * batch,), bool)
        if first:
            reset[:batch] = True  # A new document in every row.
        return {"token_ids": x, "reset": reset}, y

    return systems, data, dict(config=config, batch=batch, length=length, flop_shape=flop_shape)


def _step_timer_class():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Waits for the loss after the first and the last step of a `fit`
        (steps are dispatched asynchronously) and times the steps between."""

        def __init__(self, steps):
            super().__init__()
            self.steps, self.marks = steps, {}

        def on_train_batch_end(self, batch, logs=None):
            if batch in (0, self.steps - 1):
                float(logs["loss"])  # Synchronises: the step has finished.
                self.marks[batch] = time.perf_counter()

        def seconds_per_step(self):
            if self.steps < 2:
                return None  # One step (the warm-up's): nothing between two marks.
            return (self.marks[self.steps - 1] - self.marks[0]) / (self.steps - 1)

    return StepTimer


def _step_timer(steps):
    return _step_timer_class()(steps)


def _run_pair(pair, quick, schedule, peak):
    jit_compile = True
    systems, data, info = _build_pair(pair, quick, jit_compile)
    batch, length = info["batch"], info["length"]
    num_layers, hidden_dim = info["flop_shape"]

    def fit(name, steps, first=False):
        """Seconds per step from the end of the first step to the end of
        the last (so `fit`'s set-up is left out), and the last loss."""
        system = systems[name]
        x, y = data(system["inputs"], steps, first)
        timer = _step_timer(steps)
        history = system["model"].fit(
            x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer]
        )
        return timer.seconds_per_step(), float(history.history["loss"][-1])

    compile_seconds = {}
    for name in systems:  # Compilation and the first steps: not timed.
        start = time.perf_counter()
        fit(name, schedule["warmup_steps"], first=True)
        compile_seconds[name] = time.perf_counter() - start
        print(
            f"  {pair}/{name}: compile + {schedule['warmup_steps']} steps "
            f"{compile_seconds[name]:.1f} s",
            flush=True,
        )
    times = {name: [] for name in systems}
    losses = {}
    for round_index in range(schedule["rounds"]):
        for name in systems:
            seconds, losses[name] = fit(name, schedule["steps_per_round"])
            times[name].append(seconds)
        print(
            f"  {pair} round {round_index}: "
            + ", ".join(f"{n} {1000 * times[n][-1]:.1f} ms/step" for n in systems),
            flush=True,
        )

    names = list(systems)
    baseline = names[-1]
    results = {}
    for name, system in systems.items():
        step = statistics.median(times[name])
        tokens_per_s = batch * length / step
        parameters = _trainable_flop_parameters(system["model"])
        per_token = flops_per_token(
            parameters, num_layers, hidden_dim, system["attended"], system["ltm"]
        )
        results[name] = dict(
            median_step_s=step,
            step_s=times[name],
            tokens_per_s=tokens_per_s,
            trainable_parameters=parameters,
            flops_per_token=per_token,
            mfu=None if peak is None else tokens_per_s * per_token / peak,
            last_loss=losses[name],
            compile_and_warmup_s=compile_seconds[name],
        )
        if name != baseline:
            results[name][f"step_time_ratio_to_{baseline}"] = statistics.median(
                a / b for a, b in zip(times[name], times[baseline])
            )
    return dict(
        config=info["config"],
        tokens_per_step=batch * length,
        baseline=baseline,
        systems=results,
    )


def child(args):
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    kind, name = _device(args.quick)
    peak = None if kind == "cpu" else peak_flops(name)
    schedule = QUICK_SCHEDULE if args.quick else SCHEDULE
    result = dict(
        backend=keras.backend.backend(),
        device_kind=kind,
        device_name=name,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        peak_bf16_flops=peak,
        dtype_policy="mixed_bfloat16",
        jit_compile=True,
        schedule=schedule,
        keras=keras.__version__,
        pairs={},
    )
    for pair in args.pairs:
        print(f"{result['backend']}: {pair}", flush=True)
        result["pairs"][pair] = _run_pair(pair, args.quick, schedule, peak)
    with open(args.child_out, "w") as f:
        json.dump(result, f, indent=2)


# -- the driver ------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes on the CPU: a smoke test, not a measurement",
    )
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument(
        "--pairs", nargs="+", default=["paper_lm", "gpt2_small"], choices=["paper_lm", "gpt2_small"]
    )
    parser.add_argument(
        "--out",
        default=None,
        help=f"JSON path (default: {os.path.relpath(RESULTS, ROOT)}; "
        "with --quick a temporary file)",
    )
    parser.add_argument(
        "--timeout", type=float, default=570.0, help="seconds allowed per backend process"
    )
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_out:
        return child(args)

    gpus = nvidia_gpus()
    if not args.quick and not gpus:
        print(
            "gpu_check: no GPU found (nvidia-smi lists none). This script "
            "measures GPU training and never reports numbers measured on a "
            "CPU; run it on a GPU machine, or `--quick` for the CPU smoke test.",
            file=sys.stderr,
        )
        return 2
    out = args.out or (
        os.path.join(tempfile.gettempdir(), "gpu_check_quick.json") if args.quick else RESULTS
    )
    record = dict(
        what="training throughput with fit, mixed_bfloat16, compiled; pairs side by side",
        quick=args.quick,
        device="cpu" if args.quick else gpus[0],
        gpus_listed=gpus,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=dict(processor=platform.processor() or platform.machine(), cpus=os.cpu_count()),
        backends={},
    )
    if os.path.exists(out) and not args.quick:
        # One backend per call fits a short GPU slot: keep the others' results.
        with open(out) as f:
            previous = json.load(f)
        if not previous.get("quick"):
            record["backends"].update(previous.get("backends", {}))
    status = 0
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as scratch:
            child_out = os.path.join(scratch, "result.json")
            env = dict(os.environ, KERAS_BACKEND=backend)
            env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            if args.quick:
                env["CUDA_VISIBLE_DEVICES"] = "-1"  # The smoke test stays on the CPU.
                env["JAX_PLATFORMS"] = "cpu"
            env["PYTHONPATH"] = os.pathsep.join(
                [ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
            )
            command = [
                sys.executable,
                os.path.abspath(__file__),
                "--child-out",
                child_out,
                "--pairs",
                *args.pairs,
            ] + (["--quick"] if args.quick else [])
            print(f"=== KERAS_BACKEND={backend}", flush=True)
            start = time.perf_counter()
            try:
                result = subprocess.run(
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=args.timeout,
                )
                output, returncode = result.stdout, result.returncode
            except subprocess.TimeoutExpired as error:
                output = (
                    (error.stdout or b"").decode()
                    if isinstance(error.stdout, bytes)
                    else (error.stdout or "")
                )
                returncode = None
            print(output, end="", flush=True)
            if returncode == 0 and os.path.exists(child_out):
                with open(child_out) as f:
                    record["backends"][backend] = json.load(f)
                record["backends"][backend]["wall_s"] = time.perf_counter() - start
            else:
                status = 1
                reason = "timed out" if returncode is None else f"exit status {returncode}"
                record["backends"][backend] = dict(error=reason, output_tail=output[-3000:])
    _print_table(record)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {out}")
    return status


def _print_table(record):
    print(
        f"\n{'backend':10s} {'system':18s} {'step ms':>9s} {'tokens/s':>10s} "
        f"{'x baseline':>10s} {'MFU':>6s}"
    )
    for backend, result in record["backends"].items():
        if "error" in result:
            print(f"{backend:10s} error: {result['error']}")
            continue
        for pair in result["pairs"].values():
            for name, r in pair["systems"].items():
                ratio = next((v for k, v in r.items() if k.startswith("step_time_ratio")), 1.0)
                mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
                print(
                    f"{backend:10s} {name:18s} {1000 * r['median_step_s']:9.2f} "
                    f"{r['tokens_per_s']:10.0f} {ratio:10.2f} {mfu:>6s}"
                )


if __name__ == "__main__":
    sys.exit(main())
