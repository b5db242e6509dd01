"""Real text: does the continuous memory help a byte-level language model?

Byte-level (keras-hub `ByteTokenizer`) language modelling on a folder of text
files, split by document: a seeded share of the files is held out, no file is
in both parts. Training documents (shuffled once, seeded) are laid into
`--batch-size` streams of `--segment-length` bytes with a memory reset at each
document start (`StreamingDataset`).

Part 1, from scratch: four systems of the same width, depth, heads,
feed-forward width, segment and short-term window, built from the same seed
(the sublayers they share start from the same weights: the ∞-former is its
Transformer-XL plus a memory whose output starts at zero), trained on the
same batches for the same steps with `train_on_batch`, alternating within
each step:

  infformer          continuous long-term memory, uniform sampling
  infformer_sticky   the same with sticky memories
  xl                 nothing beyond the short-term window (Transformer-XL)
  compressive        a Compressive Transformer memory of N slots

and, on request (`--systems ... xl_twin`), a control that measures how far
training alone moves a result:

  xl_twin            Transformer-XL from the same draw with every initial
                     weight moved by about one part in a million (seeded);
                     its difference from xl is what two trainings of the
                     same model on the same batches differ by

Measured on the held-out documents (each streamed from its first byte):

- bits per byte overall and by position in the document (buckets
  `--buckets`, default bytes 0-1k, 1k-4k, 4k-16k, 16k+), with a 95 %
  bootstrap interval over documents (documents resampled with replacement,
  the bucket mean recomputed weighted by bytes; one resampling shared by all
  systems, so the difference from Transformer-XL has a paired interval too);
- the read-twice probe: the first K bytes of held-out documents (K beyond
  Transformer-XL's reach) followed by the same K bytes again, as one
  document; bits per byte on the second copy against the first. A model
  that remembers the first copy predicts the second better: the drop.

Part 2, the paper's §5.2 at small scale: a byte-level keras-hub
`GPT2Backbone` (maximum length one segment of `--gpt2-segment` bytes,
positions restarting every segment) is pretrained as `GPT2CausalLM`, with no
memory, on the training streams (`--pretrain-steps`); two copies of its
weights are then fine-tuned on the next `--finetune-steps` batches, the
same batches and optimizer settings for both:

  gpt2          (a) as is
  gpt2_memory   (b) with the continuous memory added
                (`InfiniteFormerGPT2CausalLM.from_backbone`, sticky
                memories, every weight trained, emptied per document)

Before fine-tuning (b) equals (a) (its memories' output projections start
at zero; checked on held-out bytes, `zero_start`). Measured as in part 1:
bits per byte by position with the paired difference from (a), and the
read-twice probe (K = `--gpt2-probe-bytes`, default 4 segments). Part 2
goes under "part2" of the JSON; with `--parts 2` alone the JSON at `--out`
is read and only its "part2" is replaced (and `--parts 1` keeps an earlier
"part2"). Its plot is text_lm_gpt2.png.

Usage:

    apt-get install linux-doc-6.1     # the default corpus (3,184 files, 25 MB)
    KERAS_BACKEND=jax python benchmarks/text_lm.py            # full: ~1.3 hours
    KERAS_BACKEND=jax python benchmarks/text_lm.py --parts 2  # part 2: ~20 min
    python benchmarks/text_lm.py --quick --max-files 40       # minutes
    python benchmarks/text_lm.py --corpus DIR --logdir logs/text_lm
    tensorboard --logdir logs/text_lm

Writes benchmarks/results/text_lm.json (or `--out`), text_lm.png and
text_lm_gpt2.png next to it, prints tables, and TensorBoard logs of every
run under `--logdir`.
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

DEFAULT_CORPUS = "/usr/share/doc/linux-doc-6.1/html/_sources"
SYSTEMS = ("infformer", "infformer_sticky", "xl", "compressive")
CONTROLS = ("xl_twin",)
BASELINE = "xl"
# The control's relative move of each initial weight: a few float32 ulps,
# far below anything that could change what the model can learn.
TWIN_JITTER = 1e-6

# The full configuration, sized for a 2-core CPU: measured JAX steps of
# 250-340 ms per system (load ~3) give 10-14 minutes of training per system,
# about 50 minutes for the four, plus evaluation (see the README).
FULL = dict(
    steps=2500,
    batch_size=8,
    segment_length=256,
    num_layers=2,
    hidden_dim=128,
    num_heads=4,
    num_basis=128,
    buckets=[0, 1024, 4096, 16384],
    eval_max_bytes=65536,
    probe_documents=64,
    bootstrap=1000,
)
# --quick: a few minutes at most on the real corpus, seconds on a tiny one.
QUICK = dict(
    steps=60,
    batch_size=4,
    segment_length=32,
    num_layers=2,
    hidden_dim=32,
    num_heads=2,
    num_basis=16,
    buckets=[0, 64, 256, 1024],
    eval_max_bytes=4096,
    probe_documents=8,
    bootstrap=200,
)
# Part 2's sizes (the batch, buckets and evaluation settings are part 1's);
# the depth and width of part 1's systems. Full: measured JAX steps (load
# ~4-5) of 136-220 ms (GPT-2) and 375 ms (with the memory) give 6-9 minutes
# of pretraining, 6 of fine-tuning and ~4 of evaluation (see the README).
FULL_GPT2 = dict(
    pretrain_steps=2500,
    finetune_steps=600,
    gpt2_segment=256,
    gpt2_layers=2,
    gpt2_hidden_dim=128,
    gpt2_heads=4,
    gpt2_num_basis=128,
)
QUICK_GPT2 = dict(
    pretrain_steps=40,
    finetune_steps=20,
    gpt2_segment=32,
    gpt2_layers=2,
    gpt2_hidden_dim=32,
    gpt2_heads=2,
    gpt2_num_basis=16,
)
GPT2_SYSTEMS = ("gpt2", "gpt2_memory")  # (a) as is, (b) with the memory.
GPT2_BASELINE = "gpt2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--corpus",
        default=DEFAULT_CORPUS,
        help="a folder of .txt files, read recursively (default: the "
        "Linux kernel's documentation sources of Debian's linux-doc-6.1)",
    )
    p.add_argument(
        "--max-files", type=int, default=None, help="read the first N files only (sorted order)"
    )
    p.add_argument("--held-out", type=float, default=0.1, help="share of files held out")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny configuration (minutes); results are not written "
        "to benchmarks/results unless --out is given",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        type=int,
        default=[1, 2],
        choices=[1, 2],
        help="1: the four systems from scratch; 2: a pretrained GPT-2 "
        "fine-tuned with and without the memory. Results go into the "
        "JSON at --out, merged with what it already holds",
    )
    p.add_argument(
        "--systems",
        nargs="+",
        default=list(SYSTEMS),
        choices=SYSTEMS + CONTROLS,
        help="the systems trained (default: the four; xl_twin is a control)",
    )
    size = p.add_argument_group(
        "model and training (defaults: the full configuration, or --quick's)"
    )
    size.add_argument("--steps", type=int, default=None, help="training steps")
    size.add_argument("--batch-size", type=int, default=None, help="parallel streams")
    size.add_argument(
        "--segment-length",
        type=int,
        default=None,
        help="bytes per segment; also the short-term window",
    )
    size.add_argument(
        "--memory-length",
        type=int,
        default=None,
        help="short-term window (default: the segment length)",
    )
    size.add_argument("--num-layers", type=int, default=None)
    size.add_argument("--hidden-dim", type=int, default=None)
    size.add_argument("--num-heads", type=int, default=None)
    size.add_argument(
        "--intermediate-dim",
        type=int,
        default=None,
        help="feed-forward width of every system (default 4 x hidden)",
    )
    size.add_argument(
        "--num-basis",
        type=int,
        default=None,
        help="N basis functions; also M samples and the compressive memory's slots",
    )
    size.add_argument("--tau", type=float, default=0.75)
    size.add_argument(
        "--density-mode",
        choices=("affine", "content"),
        default="affine",
        help="how the ∞-former's queries place their density",
    )
    size.add_argument(
        "--basis-widths",
        type=float,
        nargs="+",
        default=None,
        help="the ∞-former's basis widths (default: the model's, scaled with "
        "--num-basis: (0.04, 0.2) at N = 128; runs before 2026-12-07 used 0.01 0.05)",
    )
    size.add_argument("--compression-rate", type=int, default=4)
    size.add_argument("--dropout", type=float, default=0.0)
    size.add_argument(
        "--learning-rate", type=float, default=2e-3, help="peak of a warm-up + cosine schedule"
    )
    size.add_argument(
        "--clipnorm",
        type=float,
        default=1.0,
        help="global gradient-norm clip (all trainable weights together); 0 turns it off",
    )
    g2 = p.add_argument_group(
        "part 2: GPT-2 pretrained, then fine-tuned (defaults: the full configuration, or --quick's)"
    )
    g2.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="steps of GPT-2 alone, each segment independent",
    )
    g2.add_argument(
        "--finetune-steps",
        type=int,
        default=None,
        help="steps of each fine-tune, (a) as is and (b) with the memory",
    )
    g2.add_argument(
        "--gpt2-segment",
        type=int,
        default=None,
        help="bytes per segment = the backbone's maximum sequence "
        "length; positions restart every segment",
    )
    g2.add_argument("--gpt2-layers", type=int, default=None)
    g2.add_argument("--gpt2-hidden-dim", type=int, default=None)
    g2.add_argument("--gpt2-heads", type=int, default=None)
    g2.add_argument("--gpt2-intermediate-dim", type=int, default=None, help="default 4 x hidden")
    g2.add_argument(
        "--gpt2-num-basis",
        type=int,
        default=None,
        help="N basis functions of each layer's memory (also M)",
    )
    g2.add_argument("--gpt2-tau", type=float, default=0.5)
    g2.add_argument("--gpt2-basis-widths", type=float, nargs="+", default=[0.005, 0.01])
    g2.add_argument(
        "--gpt2-num-bins",
        type=int,
        default=None,
        help="sticky histogram bins (default: the number of basis functions)",
    )
    g2.add_argument(
        "--finetune-learning-rate",
        type=float,
        default=1e-3,
        help="peak of the fine-tunes' warm-up + cosine schedule (pretraining uses --learning-rate)",
    )
    g2.add_argument(
        "--gpt2-probe-bytes",
        type=int,
        default=None,
        help="K of part 2's read-twice probe (default 4 segments)",
    )
    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--buckets",
        type=int,
        nargs="+",
        default=None,
        help="left edges of the position buckets, in bytes",
    )
    ev.add_argument(
        "--eval-max-bytes",
        type=int,
        default=None,
        help="held-out documents are cut to this many bytes",
    )
    ev.add_argument(
        "--eval-documents",
        type=int,
        default=None,
        help="evaluate this many held-out documents (default all)",
    )
    ev.add_argument(
        "--probe-bytes",
        type=int,
        default=None,
        help="K, the bytes read twice (default: max(4 segments, "
        "2 segments beyond Transformer-XL's reach))",
    )
    ev.add_argument("--probe-documents", type=int, default=None)
    ev.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples")
    p.add_argument(
        "--logdir",
        default=os.path.join(_common.REPO_ROOT, "logs", "text_lm"),
        help="TensorBoard logs, one folder per system",
    )
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument(
        "--backend",
        choices=_common.BACKENDS,
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else jax)",
    )
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--out", default=None, help="output JSON (the PNG goes next to it)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    defaults = dict(QUICK, **QUICK_GPT2) if args.quick else dict(FULL, **FULL_GPT2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.parts = sorted(set(args.parts))
    args.gpt2_intermediate_dim = args.gpt2_intermediate_dim or 4 * args.gpt2_hidden_dim
    args.gpt2_num_bins = args.gpt2_num_bins or args.gpt2_num_basis
    args.gpt2_probe_bytes = args.gpt2_probe_bytes or 4 * args.gpt2_segment
    args.memory_length = args.memory_length or args.segment_length
    args.intermediate_dim = args.intermediate_dim or 4 * args.hidden_dim
    args.buckets = sorted(set(args.buckets) | {0})
    reach = args.num_layers * args.memory_length
    if args.probe_bytes is None:
        args.probe_bytes = max(4 * args.segment_length, reach + 2 * args.segment_length)
    if 1 in args.parts and args.probe_bytes <= reach + args.segment_length:
        print(
            f"warning: --probe-bytes {args.probe_bytes} is within Transformer-XL's "
            f"reach ({reach} + a segment): the probe will not separate the systems",
            file=sys.stderr,
        )
    return args


# -- data ----------------------------------------------------------------------


def load_corpus(args):
    """(token arrays, vocabulary size) of every document; a clear exit if
    the folder does not exist."""
    from keras_infformer.data import text as text_utils
    from keras_infformer.models import InfiniteFormerCausalLMPreprocessor

    if not os.path.isdir(args.corpus):
        raise SystemExit(
            f"text_lm: the corpus folder {args.corpus!r} does not exist. The "
            "default corpus is the Linux kernel's documentation: install it "
            "with `apt-get install linux-doc-6.1` (as root; its .rst.txt "
            f"sources land in {DEFAULT_CORPUS}), or pass --corpus DIR, any "
            "folder of .txt files (read recursively, one document per file)."
        )
    texts = text_utils.read_text_files(args.corpus, max_files=args.max_files)
    preprocessor = InfiniteFormerCausalLMPreprocessor()  # 256 byte ids.
    documents = text_utils.tokenize_documents(preprocessor.tokenizer, texts)
    if len(documents) < 2:
        raise SystemExit(
            f"text_lm: {args.corpus!r} holds {len(documents)} non-empty .txt "
            "file(s); at least 2 are needed (one to train on, one held out)."
        )
    return documents, preprocessor.vocabulary_size()


def split(documents, args):
    """Seeded split by document, then the evaluation subset, cut to size."""
    import numpy as np

    from keras_infformer.data import text as text_utils

    train_ids, held_ids = text_utils.split_documents(documents, args.held_out, args.seed)
    # Training streams in a seeded random order: neighbouring files of a
    # folder are alike, and the first steps should not see one folder only.
    rng = np.random.default_rng(args.seed)
    train_ids = [train_ids[i] for i in rng.permutation(len(train_ids))]
    eval_ids = list(held_ids)
    if args.eval_documents is not None and args.eval_documents < len(eval_ids):
        eval_ids = sorted(rng.choice(eval_ids, args.eval_documents, replace=False).tolist())
    return train_ids, held_ids, eval_ids


# -- models --------------------------------------------------------------------


def _language_model(kind, args, vocabulary_size, intermediate_dim):
    from keras_infformer.models import InfiniteFormerLM

    common = dict(
        vocabulary_size=vocabulary_size,
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        num_heads=args.num_heads,
        intermediate_dim=intermediate_dim,
        memory_length=args.memory_length,
        dropout=args.dropout,
        name=kind,
    )
    if kind.startswith("infformer"):
        return InfiniteFormerLM(
            use_long_term_memory=True,
            num_basis=args.num_basis,
            num_samples=args.num_basis,
            tau=args.tau,
            basis_widths=None if args.basis_widths is None else tuple(args.basis_widths),
            density_mode=args.density_mode,
            sticky_memories=kind == "infformer_sticky",
            **common,
        )
    if kind in ("xl", "xl_twin"):
        return InfiniteFormerLM(use_long_term_memory=False, **common)
    return InfiniteFormerLM(
        use_long_term_memory=False,
        compressed_memory_length=args.num_basis,
        compression_rate=args.compression_rate,
        **common,
    )


def trainable_parameters(model):
    import numpy as np

    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def build_systems(args, vocabulary_size):
    """name -> compiled model, all from the same seed and schedule.

    The training and evaluation below take anything with `train_on_batch`,
    `predict_on_batch` (logits) and `reset_state` on these batches (part 2's
    `PlainGPT2` and `InfiniteFormerGPT2CausalLM` too).
    """
    import keras

    systems = {}
    for kind in args.systems:
        # The same draw for every system, and the same feed-forward width:
        # a system differs from Transformer-XL by its memory only (its
        # extra parameters are the memory's, reported per system).
        keras.utils.set_random_seed(args.seed)
        model = _language_model(kind, args, vocabulary_size, args.intermediate_dim)
        if kind == "xl_twin":
            jitter_weights(model, TWIN_JITTER, args.seed)
        compile_for_streams(model, args.steps, args.learning_rate, args.clipnorm)
        systems[kind] = model
    return systems


def jitter_weights(model, relative, seed):
    """Multiply every trainable weight by `1 + relative * N(0, 1)`, seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for variable in model.trainable_variables:
        value = np.asarray(variable.numpy(), dtype=np.float64)
        moved = value * (1.0 + relative * rng.standard_normal(value.shape))
        variable.assign(moved.astype(variable.dtype))


def compile_for_streams(model, steps, learning_rate, clipnorm):
    """Adam on a warm-up (5 %) + cosine schedule, the masked token loss."""
    import keras

    from keras_infformer import metrics

    warmup = max(1, steps // 20)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, steps - warmup),
        alpha=0.1,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, global_clipnorm=clipnorm or None),
        loss=metrics.masked_token_loss(),
        weighted_metrics=[],  # Held-out losses are computed here, per byte.
        jit_compile=keras.backend.backend() != "torch",
    )


# -- training ------------------------------------------------------------------


def summary_writers(logdir, names):
    """One TensorBoard writer per system (None when TensorFlow is missing)."""
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover - depends on the install
        print("TensorFlow is not installed: no TensorBoard logs.", file=sys.stderr)
        return {n: None for n in names}
    return {n: tf.summary.create_file_writer(os.path.join(logdir, n)) for n in names}


def log_scalars(writer, step, values):
    if writer is None:
        return
    import tensorflow as tf

    with writer.as_default(step=step):
        for tag, value in values.items():
            if value is not None and math.isfinite(value):
                tf.summary.scalar(tag, value)


def train(systems, dataset, args, writers, steps=None, first_step=0):
    """The same batches for every system, alternating within each step.

    `steps` (default `--steps`) batches from step `first_step` of the
    stream on (part 2 fine-tunes on the batches after pretraining's).
    """
    import numpy as np

    steps = args.steps if steps is None else steps
    names = list(systems)
    times = {n: [] for n in names}
    losses = {n: [] for n in names}
    report = max(1, steps // 10)
    for step in range(steps):
        # More steps than one pass: start over (step 0 of a pass resets all rows).
        x, y, w = dataset.get_batch((first_step + step) % len(dataset))
        for name in names if step % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            out = systems[name].train_on_batch(x, y, sample_weight=w, return_dict=True)
            loss = float(np.asarray(out["loss"]))
            times[name].append(time.perf_counter() - t0)
            losses[name].append(loss)
            if step % args.log_every == 0 or step == steps - 1:
                log_scalars(
                    writers[name],
                    step,
                    {
                        "train/loss_bits_per_byte": loss / math.log(2),
                        "train/step_seconds": times[name][-1],
                    },
                )
        if (step + 1) % report == 0:
            print(
                f"step {step + 1}/{steps}: "
                + ", ".join(f"{n} {np.mean(losses[n][-report:]) / math.log(2):.3f}" for n in names)
                + " bits/byte (train loss)",
                flush=True,
            )
    return times, losses


# -- evaluation ----------------------------------------------------------------


def per_byte_losses(model, dataset):
    """Bits of every predicted byte of a stream, and where it is.

    Returns `(document, position, bits)`, 1-D arrays over the real targets:
    the target byte sits at `position` of document `document` (an index into
    the documents the dataset was built from). The model reads the stream
    from a clean memory, segment by segment (`predict_on_batch`).
    """
    import keras
    import numpy as np

    model.reset_state()
    documents, positions, bits = [], [], []
    for step in range(len(dataset)):
        x, y, w = dataset.get_batch(step)
        logits = keras.ops.convert_to_numpy(model.predict_on_batch(x)).astype(np.float64)
        top = logits.max(-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
        nll = log_z - np.take_along_axis(logits, y[..., None], -1)[..., 0]
        document, offset = dataset.positions(step)
        real = w > 0
        documents.append(document[real])
        positions.append(offset[real] + 1)  # The target is the next byte.
        bits.append(nll[real] / math.log(2))
    model.reset_state()
    return tuple(np.concatenate(a) for a in (documents, positions, bits))


def bucket_sums(document, position, bits, num_documents, edges):
    """Per-document (sum of bits, byte count) in each bucket: (D, K) twice."""
    import numpy as np

    k = np.searchsorted(np.asarray(edges), position, side="right") - 1
    sums = np.zeros((num_documents, len(edges)))
    counts = np.zeros((num_documents, len(edges)))
    np.add.at(sums, (document, k), bits)
    np.add.at(counts, (document, k), 1.0)
    return sums, counts


def resampling_weights(num_documents, resamples, seed):
    """How many times each document is drawn, per bootstrap resample."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.multinomial(
        num_documents, [1.0 / num_documents] * num_documents, size=resamples
    ).astype(np.float64)


def _ratio(weights, sums, counts):
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ sums) / (weights @ counts)


def _interval(samples):
    import numpy as np

    finite = samples[np.isfinite(samples)]
    if not finite.size:
        return [None, None]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def position_summary(sums, counts, edges, weights, baseline=None, baseline_name=BASELINE):
    """Bits per byte per bucket and overall, with bootstrap intervals.

    `baseline` (another system's `(sums, counts)` on the same documents)
    adds the paired difference `this - baseline` (`minus_<baseline_name>`)
    and its interval.
    """
    import numpy as np

    def table(s, c):
        columns = np.concatenate([s, s.sum(1, keepdims=True)], 1)
        total = np.concatenate([c, c.sum(1, keepdims=True)], 1)
        return columns, total

    s, c = table(sums, counts)
    point = _ratio(np.ones((1, len(s))), s, c)[0]
    boot = _ratio(weights, s, c)
    if baseline is not None:
        bs, bc = table(*baseline)
        base_point = _ratio(np.ones((1, len(bs))), bs, bc)[0]
        base_boot = _ratio(weights, bs, bc)
    labels = [bucket_label(edges, i) for i in range(len(edges))] + ["all"]
    rows = []
    for i, label in enumerate(labels):
        bytes_ = int(c[:, i].sum())
        row = {
            "bucket": label,
            "bytes": bytes_,
            "documents": int((c[:, i] > 0).sum()),
            "bits_per_byte": float(point[i]) if bytes_ else None,
            "ci95": _interval(boot[:, i]) if bytes_ else [None, None],
        }
        if baseline is not None and bytes_:
            row["minus_" + baseline_name] = float(point[i] - base_point[i])
            row["minus_" + baseline_name + "_ci95"] = _interval(boot[:, i] - base_boot[:, i])
        rows.append(row)
    return rows


def bucket_label(edges, i):
    def kb(n):
        return f"{n // 1024}k" if n and n % 1024 == 0 else str(n)

    if i + 1 < len(edges):
        return f"{kb(edges[i])}-{kb(edges[i + 1])}"
    return f"{kb(edges[i])}+"


def curve(document, position, bits, max_position):
    """Mean bits per byte in doubling position bins (for the plot)."""
    import numpy as np

    edges = [1]
    while edges[-1] < max_position:
        edges.append(edges[-1] * 2)
    k = np.searchsorted(np.asarray(edges), position, side="right") - 1
    out = []
    for i in range(len(edges) - 1):
        sel = k == i
        if sel.any():
            out.append(
                {
                    "from": edges[i],
                    "to": edges[i + 1],
                    "bytes": int(sel.sum()),
                    "bits_per_byte": float(bits[sel].mean()),
                }
            )
    return out


def read_twice_probe(model, held_documents, args, weights_seed):
    """Bits per byte on the second copy of K bytes vs on the first.

    Each probe document is the first K bytes of a held-out document,
    followed by the same K bytes. Copy 1 scores targets at positions 1..K-1,
    copy 2 the same bytes again at K+1..2K-1 (the byte at K, predicted across
    the seam, is left out of both).
    """
    import numpy as np

    from keras_infformer.data import StreamingDataset

    K = args.probe_bytes
    doubled = [np.concatenate([d[:K], d[:K]]) for d in held_documents if len(d) >= K]
    doubled = doubled[: args.probe_documents]
    if not doubled:
        return {"documents": 0, "note": f"no held-out document has {K} bytes"}
    dataset = StreamingDataset(doubled, args.batch_size, args.segment_length)
    document, position, bits = per_byte_losses(model, dataset)
    n = len(doubled)
    first = (position >= 1) & (position < K)
    second = position >= K + 1
    s1 = np.bincount(document[first], bits[first], n)
    s2 = np.bincount(document[second], bits[second], n)
    c = np.bincount(document[first], minlength=n).astype(np.float64)
    weights = resampling_weights(n, args.bootstrap, weights_seed)
    b1 = (weights @ s1) / (weights @ c)
    b2 = (weights @ s2) / (weights @ c)
    return {
        "documents": n,
        "bytes_per_copy": int(c.sum()),
        "copy1_bits_per_byte": float(s1.sum() / c.sum()),
        "copy2_bits_per_byte": float(s2.sum() / c.sum()),
        "drop": float((s1.sum() - s2.sum()) / c.sum()),
        "drop_ci95": _interval(b1 - b2),
    }


# -- part 2: a pretrained GPT-2, fine-tuned with and without the memory --------


class PlainGPT2:
    """keras-hub's `GPT2CausalLM` driven like part 1's systems.

    Each segment is one forward pass on its own, so there is no state to
    reset and the `reset` input is dropped. Every position is shown to
    attention (the padding that ends a stream comes after the real bytes,
    which attend causally, and its weight is 0).
    """

    def __init__(self, model):
        self.model = model

    @staticmethod
    def _inputs(x):
        import numpy as np

        token_ids = x["token_ids"]
        return {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}

    def train_on_batch(self, x, y, sample_weight=None, return_dict=False):
        return self.model.train_on_batch(
            self._inputs(x), y, sample_weight=sample_weight, return_dict=return_dict
        )

    def predict_on_batch(self, x):
        return self.model.predict_on_batch(self._inputs(x))

    def reset_state(self):
        pass

    @property
    def trainable_variables(self):
        return self.model.trainable_variables


def gpt2_backbone(args, vocabulary_size):
    """A small random GPT-2 whose maximum length is one segment."""
    import keras_hub

    return keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=args.gpt2_layers,
        num_heads=args.gpt2_heads,
        hidden_dim=args.gpt2_hidden_dim,
        intermediate_dim=args.gpt2_intermediate_dim,
        max_sequence_length=args.gpt2_segment,
        dropout=args.dropout,
    )


def copy_backbone(backbone):
    """A new backbone of the same configuration and weights."""
    import keras_hub

    copy = keras_hub.models.GPT2Backbone.from_config(backbone.get_config())
    copy.set_weights(backbone.get_weights())
    return copy


def build_gpt2_systems(backbone, args):
    """(a) and (b) over two copies of the pretrained `backbone`, compiled
    with the same optimizer settings for the fine-tune."""
    import keras
    import keras_hub

    from keras_infformer.models import InfiniteFormerGPT2CausalLM

    keras.utils.set_random_seed(args.seed + 3)
    plain = keras_hub.models.GPT2CausalLM(copy_backbone(backbone), preprocessor=None, name="gpt2")
    memory_model = InfiniteFormerGPT2CausalLM.from_backbone(
        copy_backbone(backbone),
        segment_length=args.gpt2_segment,
        batch_size=args.batch_size,
        num_basis=args.gpt2_num_basis,
        basis_widths=tuple(args.gpt2_basis_widths),
        tau=args.gpt2_tau,
        num_bins=args.gpt2_num_bins,
        sticky_memories=True,
        finetune="all",
        name="gpt2_memory",
    )
    for model in (plain, memory_model):
        compile_for_streams(model, args.finetune_steps, args.finetune_learning_rate, args.clipnorm)
    return {"gpt2": PlainGPT2(plain), "gpt2_memory": memory_model}


def zero_start(systems, eval_docs, args):
    """Before fine-tuning, (b) is (a): per-byte bits of both on the first
    two segments of the first held-out documents (the memory holds the
    first segment when the second is read)."""
    import numpy as np

    from keras_infformer.data import StreamingDataset

    docs = [d[: 2 * args.gpt2_segment] for d in eval_docs[: args.batch_size]]
    dataset = StreamingDataset(docs, args.batch_size, args.gpt2_segment)
    bits = {n: per_byte_losses(m, dataset)[2] for n, m in systems.items()}
    a, b = (bits[n] for n in GPT2_SYSTEMS)
    return {
        "documents": len(docs),
        "bytes": int(a.size),
        "gpt2_bits_per_byte": float(a.mean()),
        "gpt2_memory_bits_per_byte": float(b.mean()),
        "max_abs_bits_difference": float(np.abs(a - b).max()),
    }


def train_summary(times, losses, parameters):
    import numpy as np

    warm = times[10:] or times
    return {
        "trainable_parameters": parameters,
        "train_seconds": float(sum(times)),
        "median_step_ms": 1000 * float(np.median(warm)),
        "first_step_s": float(times[0]),
        "final_train_bits_per_byte": float(np.mean(losses[-50:]) / math.log(2)),
    }


def run_part2(args, documents, train_ids, eval_ids, eval_docs, weights, vocabulary_size):
    """Pretrain GPT-2 alone, fine-tune (a) as is and (b) with the memory."""
    import argparse

    import keras
    import keras_hub

    from keras_infformer.data import StreamingDataset

    start = time.perf_counter()
    segment = args.gpt2_segment
    train_set = StreamingDataset([documents[i] for i in train_ids], args.batch_size, segment)
    eval_set = StreamingDataset(eval_docs, args.batch_size, segment)
    writers = summary_writers(args.logdir, ["gpt2_pretrain", *GPT2_SYSTEMS])

    print(f"part 2: pretraining GPT-2 ({args.pretrain_steps} steps)", flush=True)
    keras.utils.set_random_seed(args.seed)
    pretrained = keras_hub.models.GPT2CausalLM(
        gpt2_backbone(args, vocabulary_size), preprocessor=None, name="gpt2_pretrain"
    )
    compile_for_streams(pretrained, args.pretrain_steps, args.learning_rate, args.clipnorm)
    t0 = time.perf_counter()
    times, losses = train(
        {"gpt2_pretrain": PlainGPT2(pretrained)},
        train_set,
        args,
        writers,
        steps=args.pretrain_steps,
    )
    pretrain_wall = time.perf_counter() - t0
    pretrain = train_summary(
        times["gpt2_pretrain"], losses["gpt2_pretrain"], trainable_parameters(pretrained)
    )

    systems = build_gpt2_systems(pretrained.backbone, args)
    zero = zero_start(systems, eval_docs, args)
    print(
        f"zero start: {zero['gpt2_bits_per_byte']:.4f} vs "
        f"{zero['gpt2_memory_bits_per_byte']:.4f} bits per byte (max difference "
        f"{zero['max_abs_bits_difference']:.2e})",
        flush=True,
    )
    print(
        f"part 2: fine-tuning {', '.join(systems)} ({args.finetune_steps} steps "
        f"each, from step {args.pretrain_steps} of the streams)",
        flush=True,
    )
    t0 = time.perf_counter()
    times, losses = train(
        systems, train_set, args, writers, steps=args.finetune_steps, first_step=args.pretrain_steps
    )
    finetune_wall = time.perf_counter() - t0

    probe_args = argparse.Namespace(
        **dict(vars(args), segment_length=segment, probe_bytes=args.gpt2_probe_bytes)
    )
    stats, results = {}, {}
    for name, model in systems.items():
        t0 = time.perf_counter()
        document, position, bits = per_byte_losses(model, eval_set)
        stats[name] = bucket_sums(document, position, bits, len(eval_docs), args.buckets)
        eval_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        probe = read_twice_probe(model, [documents[i] for i in eval_ids], probe_args, args.seed + 2)
        results[name] = dict(
            train_summary(times[name], losses[name], trainable_parameters(model)),
            eval_seconds=eval_seconds,
            probe_seconds=time.perf_counter() - t0,
            curve=curve(document, position, bits, args.eval_max_bytes),
            probe=probe,
        )
    for name in systems:
        base = stats[GPT2_BASELINE] if name != GPT2_BASELINE else None
        results[name]["by_position"] = position_summary(
            *stats[name], args.buckets, weights, baseline=base, baseline_name=GPT2_BASELINE
        )
        log_scalars(
            writers[name],
            args.finetune_steps,
            {
                "held_out/bits_per_byte": results[name]["by_position"][-1]["bits_per_byte"],
                "probe/drop": results[name]["probe"].get("drop"),
            },
        )
    for writer in writers.values():
        if writer is not None:
            writer.flush()

    return {
        "task": "the paper's §5.2 at small scale: a byte-level GPT-2 pretrained "
        "on the training split without memory, then fine-tuned for the same "
        "steps (a) as is (gpt2) and (b) with the continuous memory added "
        "(gpt2_memory, zero start); held-out bits per byte by position and "
        "the read-twice probe",
        "settings": {k: v for k, v in vars(args).items()},
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps,
        "train_steps_per_pass": len(train_set),
        "eval_steps": len(eval_set),
        "pretrain_bytes_seen": args.pretrain_steps * args.batch_size * segment,
        "finetune_bytes_seen": args.finetune_steps * args.batch_size * segment,
        "pretrain": pretrain,
        "zero_start": zero,
        "pretrain_wall_seconds": pretrain_wall,
        "finetune_wall_seconds": finetune_wall,
        "wall_seconds": time.perf_counter() - start,
        "gpt2_reach_bytes": segment,
        "probe_bytes": args.gpt2_probe_bytes,
        "results": results,
        "environment": _common.environment(),
        "notes": {
            "systems": "gpt2: keras-hub GPT2CausalLM over a copy of the "
            "pretrained backbone; gpt2_memory: InfiniteFormerGPT2CausalLM over "
            "another copy (sticky memories, every weight fine-tuned). Both "
            "read every segment as one pass with positions restarting at 0; "
            "the memory is emptied at each document start",
            "data": "pretraining reads steps 0..pretrain_steps-1 of the "
            "training streams, the fine-tunes the next finetune_steps (the "
            "same batches for both, alternating within each step)",
            "zero_start": "per-byte bits of (a) and (b) right after the copy, "
            "on the first two segments of the first held-out documents",
            "ci95": "as in part 1, with the same resampling of documents; "
            "minus_gpt2_ci95 is the paired interval of (b) - (a)",
            "train_loss": "final_train_bits_per_byte: the last 50 steps; for "
            "gpt2_memory it includes the KL regulariser (weight 1e-6)",
        },
    }


# -- main ----------------------------------------------------------------------


def run_part1(args, documents, train_ids, eval_ids, eval_docs, weights, vocabulary_size):
    """The four systems from scratch; the record's part-1 keys."""
    import numpy as np

    from keras_infformer.data import StreamingDataset

    start = time.perf_counter()
    train_set = StreamingDataset(
        [documents[i] for i in train_ids], args.batch_size, args.segment_length
    )
    eval_set = StreamingDataset(eval_docs, args.batch_size, args.segment_length)

    systems = build_systems(args, vocabulary_size)
    sizes_p = {n: trainable_parameters(m) for n, m in systems.items()}
    print("trainable parameters: " + ", ".join(f"{n} {p:,}" for n, p in sizes_p.items()))
    writers = summary_writers(args.logdir, list(systems))

    t_train = time.perf_counter()
    times, losses = train(systems, train_set, args, writers)
    train_seconds = time.perf_counter() - t_train

    stats, results = {}, {}
    for name, model in systems.items():
        t0 = time.perf_counter()
        document, position, bits = per_byte_losses(model, eval_set)
        stats[name] = bucket_sums(document, position, bits, len(eval_docs), args.buckets)
        eval_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        probe = read_twice_probe(model, [documents[i] for i in eval_ids], args, args.seed + 2)
        warm = times[name][10:] or times[name]
        results[name] = {
            "trainable_parameters": sizes_p[name],
            "intermediate_dim": args.intermediate_dim,
            "train_seconds": float(sum(times[name])),
            "median_step_ms": 1000 * float(np.median(warm)),
            "first_step_s": float(times[name][0]),
            "final_train_bits_per_byte": float(np.mean(losses[name][-50:]) / math.log(2)),
            "eval_seconds": eval_seconds,
            "probe_seconds": time.perf_counter() - t0,
            "curve": curve(document, position, bits, args.eval_max_bytes),
            "probe": probe,
        }
    for name in systems:
        base = stats.get(BASELINE) if name != BASELINE else None
        results[name]["by_position"] = position_summary(
            *stats[name], args.buckets, weights, baseline=base
        )
        overall = results[name]["by_position"][-1]
        log_scalars(
            writers[name],
            args.steps,
            {
                "held_out/bits_per_byte": overall["bits_per_byte"],
                "probe/copy1_bits_per_byte": results[name]["probe"].get("copy1_bits_per_byte"),
                "probe/copy2_bits_per_byte": results[name]["probe"].get("copy2_bits_per_byte"),
                "probe/drop": results[name]["probe"].get("drop"),
            },
        )
        if writers[name] is not None:
            writers[name].flush()

    return {
        "task": "byte-level language modelling on real documents, split by "
        "document; held-out bits per byte by position in the document, and "
        "the read-twice probe",
        "steps": args.steps,
        "train_steps_per_pass": len(train_set),
        "train_bytes_seen": args.steps * args.batch_size * args.segment_length,
        "train_wall_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "transformer_xl_reach_bytes": args.num_layers * args.memory_length,
        "probe_bytes": args.probe_bytes,
        "results": results,
        "notes": {
            "bits_per_byte": "held-out cross-entropy in bits per predicted "
            "byte; a byte at position p of its document is predicted from "
            "bytes 0..p-1 (byte 0 is never scored)",
            "ci95": "percentile bootstrap over documents (resampled with "
            "replacement, bucket means weighted by bytes), one resampling "
            "shared by every system: minus_xl_ci95 is a paired interval",
            "train_loss": "final_train_bits_per_byte: mean training loss of "
            "the last 50 steps, in bits; for compressive it includes the "
            "memory's attention-reconstruction loss, for the ∞-former the "
            "KL regulariser",
            "timing": "train_on_batch per step, systems alternating within "
            "each step on the same batch; median over steps after the 10th",
        },
    }


def merge_into(path, record, parts):
    """The JSON at `path` with this run's parts replaced.

    Part 1 owns every key but `"part2"`; part 2 owns `"part2"`. What the
    file holds of a part not run here is kept (so `--parts 2` adds to a
    part-1 result and `--parts 1` keeps an earlier part 2).
    """
    import json

    if not path or not os.path.exists(path):
        return record
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError) as error:
        raise SystemExit(
            f"text_lm: cannot merge into {path!r} ({error}); pass another --out"
        ) from error
    merged = {k: v for k, v in old.items() if k == "part2"} if 1 in parts else dict(old)
    if 1 in parts:
        merged = dict({k: v for k, v in record.items() if k != "part2"}, **merged)
    if 2 in parts:
        merged["part2"] = record["part2"]
    return merged


def main(argv=None):
    args = parse_args(argv)
    backend = _common.select_backend(args.backend, args.torch_threads)
    from keras_infformer import basis

    # Recorded as the widths used (the model's default resolved at N).
    args.basis_widths = list(basis.resolve_basis_widths(args.num_basis, args.basis_widths))

    start = time.perf_counter()
    documents, vocabulary_size = load_corpus(args)
    train_ids, held_ids, eval_ids = split(documents, args)
    sizes = [len(d) for d in documents]
    print(
        f"corpus {args.corpus}: {len(documents)} documents, {sum(sizes):,} bytes; "
        f"{len(train_ids)} train ({sum(sizes[i] for i in train_ids):,} bytes), "
        f"{len(held_ids)} held out ({len(eval_ids)} evaluated)",
        flush=True,
    )
    # Held-out documents cut to --eval-max-bytes: positions below the cut are
    # scored exactly as in the whole document (the model reads causally).
    eval_docs = [documents[i][: args.eval_max_bytes] for i in eval_ids]
    # One resampling of the documents for every system of both parts.
    weights = resampling_weights(len(eval_docs), args.bootstrap, args.seed + 1)
    shared = {
        "corpus": {
            "path": os.path.abspath(args.corpus),
            "documents": len(documents),
            "bytes": int(sum(sizes)),
            "documents_over_16k": int(sum(s > 16384 for s in sizes)),
            "train_documents": len(train_ids),
            "train_bytes": int(sum(sizes[i] for i in train_ids)),
            "held_out_documents": len(held_ids),
            "evaluated_documents": len(eval_ids),
            "evaluated_bytes": int(sum(len(d) for d in eval_docs)),
            "evaluated_targets": int(sum(max(0, len(d) - 1) for d in eval_docs)),
        },
        # Indices into the corpus' files in sorted order; disjoint by construction.
        "split": {
            "seed": args.seed,
            "held_out_fraction": args.held_out,
            "train": sorted(train_ids),
            "held_out": list(held_ids),
            "evaluated": list(eval_ids),
        },
    }
    record = {}
    if 1 in args.parts:
        part1 = run_part1(args, documents, train_ids, eval_ids, eval_docs, weights, vocabulary_size)
        record = dict(
            task=part1.pop("task"),
            **shared,
            settings={k: v for k, v in vars(args).items()} | {"backend": backend},
            **part1,
        )
        record["environment"] = _common.environment()
        record["wall_seconds"] = time.perf_counter() - start
        print_tables(record["results"], f"{record['steps']} steps", record["probe_bytes"], BASELINE)
    if 2 in args.parts:
        part2 = run_part2(args, documents, train_ids, eval_ids, eval_docs, weights, vocabulary_size)
        part2 = dict(task=part2.pop("task"), **shared, **part2)
        part2["settings"]["backend"] = backend
        record["part2"] = part2
        print_tables(
            part2["results"],
            f"{args.pretrain_steps} pretraining + {args.finetune_steps} fine-tuning steps",
            part2["probe_bytes"],
            GPT2_BASELINE,
        )

    path = args.out or (None if args.quick else os.path.join(_common.RESULTS_DIR, "text_lm.json"))
    record = merge_into(path, record, args.parts)
    _common.write_json(path, record)
    if path and not args.no_plot:
        stem = os.path.splitext(path)[0]
        if 1 in args.parts:
            plot(
                record["results"],
                stem + ".png",
                BASELINE,
                record["transformer_xl_reach_bytes"],
                f"{record['corpus']['evaluated_documents']} held-out documents, "
                f"{record['steps']} steps (dotted: Transformer-XL's reach)",
            )
        if 2 in args.parts:
            part2 = record["part2"]
            plot(
                part2["results"],
                stem + "_gpt2.png",
                GPT2_BASELINE,
                part2["gpt2_reach_bytes"],
                f"GPT-2: {part2['pretrain_steps']} pretraining + "
                f"{part2['finetune_steps']} fine-tuning steps (dotted: one segment)",
            )
    return record


def print_tables(results, steps_text, probe_bytes, baseline):
    minus = "minus_" + baseline
    rows = []
    for name, r in results.items():
        for b in r["by_position"]:
            lo, hi = b["ci95"]
            dlo, dhi = b.get(minus + "_ci95", [None, None])
            rows.append(
                {
                    "system": name,
                    "bucket": b["bucket"],
                    "bytes": b["bytes"],
                    "docs": b["documents"],
                    "bits/byte": b["bits_per_byte"],
                    "ci95": f"{lo:.3f}-{hi:.3f}" if lo is not None else None,
                    "-base": b.get(minus),
                    "-base ci95": f"{dlo:+.3f}..{dhi:+.3f}" if dlo is not None else None,
                }
            )
    _common.print_table(
        rows,
        ["system", "bucket", "bytes", "docs", "bits/byte", "ci95", "-base", "-base ci95"],
        title=f"held-out bits per byte by position ({steps_text}; -base: minus {baseline})",
    )
    rows = []
    for name, r in results.items():
        p = r["probe"]
        lo, hi = p.get("drop_ci95", [None, None])
        rows.append(
            {
                "system": name,
                "docs": p.get("documents"),
                "copy 1": p.get("copy1_bits_per_byte"),
                "copy 2": p.get("copy2_bits_per_byte"),
                "drop": p.get("drop"),
                "drop ci95": f"{lo:.3f}-{hi:.3f}" if lo is not None else None,
                "params": r["trainable_parameters"],
                "step ms": r["median_step_ms"],
                "train s": r["train_seconds"],
            }
        )
    _common.print_table(
        rows,
        ["system", "docs", "copy 1", "copy 2", "drop", "drop ci95", "params", "step ms", "train s"],
        title=f"read-twice probe (K = {probe_bytes} bytes), and training",
    )


def plot(results, path, baseline, reach, title):
    """Bits per byte vs position in the document, per system; and minus
    `baseline`. The dotted line marks `reach` (bytes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (the JSON has the curves).")
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    base = {c["from"]: c["bits_per_byte"] for c in results.get(baseline, {}).get("curve", [])}
    for i, (name, r) in enumerate(results.items()):
        color = f"C{i}"  # The same system, the same colour in both panels.
        xs = [math.sqrt(c["from"] * c["to"]) for c in r["curve"]]
        top.plot(xs, [c["bits_per_byte"] for c in r["curve"]], marker="o", color=color, label=name)
        if base and name != baseline:
            pts = [
                (math.sqrt(c["from"] * c["to"]), c["bits_per_byte"] - base[c["from"]])
                for c in r["curve"]
                if c["from"] in base
            ]
            if pts:
                bottom.plot(*zip(*pts), marker="o", color=color, label=name)
    for ax in (top, bottom):
        ax.axvline(reach, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    top.set_ylabel("held-out bits per byte")
    top.set_title(title)
    top.legend()
    bottom.axhline(0, color="black", lw=0.8)
    bottom.set_ylabel(f"minus {baseline} (bits per byte)")
    bottom.set_xlabel("position in the document (bytes, doubling bins)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
