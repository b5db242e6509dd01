"""Plot the sorting comparison: accuracy vs sequence length, one line per model.

    python benchmarks/plot_sorting.py [--results benchmarks/results/sorting.json]
        [--extra-seeds benchmarks/results/sorting_seed1.json ...]

Lines join the runs of --results; the runs of each --extra-seeds file (other
seeds of some cells) are drawn as hollow markers in the model's colour.
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {
    "infformer": "∞-former",
    "infformer_sticky": "∞-former (sticky)",
    "xl": "Transformer-XL",
    "compressive": "Compressive Transformer",
}


def _seed_label(runs, fallback):
    seeds = sorted({r.get("config", {}).get("seed") for r in runs} - {None})
    return f"seed {', '.join(map(str, seeds))}" if seeds else fallback


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__)
    default_results = os.path.join(here, "results", "sorting.json")
    parser.add_argument("--results", default=default_results)
    parser.add_argument("--output", default=None, help="PNG path (default: next to the JSON).")
    default_extra = os.path.join(here, "results", "sorting_seed1.json")
    parser.add_argument(
        "--extra-seeds",
        nargs="*",
        default=None,
        help="Results JSONs of other seeds (hollow markers; default: "
        "results/sorting_seed1.json when plotting the default results).",
    )
    args = parser.parse_args(argv)
    if args.extra_seeds is None:
        use_default = args.results == default_results and os.path.exists(default_extra)
        args.extra_seeds = [default_extra] if use_default else []
    with open(args.results) as f:
        runs = json.load(f)["runs"]
    extra = []
    for path in args.extra_seeds:
        with open(path) as f:
            extra += json.load(f)["runs"]
    output = args.output or os.path.splitext(args.results)[0] + ".png"
    fig, ax = plt.subplots(figsize=(8, 4))
    for model in sorted({r["model"] for r in runs}):
        points = sorted((r["sequence_length"], r["accuracy"]) for r in runs if r["model"] == model)
        xs, ys = zip(*points)
        (line,) = ax.plot(xs, ys, marker="o", label=LABELS.get(model, model))
        others = [(r["sequence_length"], r["accuracy"]) for r in extra if r["model"] == model]
        if others:
            ox, oy = zip(*others)
            ax.plot(
                ox,
                oy,
                linestyle="none",
                marker="o",
                markerfacecolor="none",
                markeredgecolor=line.get_color(),
                markersize=8,
            )
    if extra:
        ax.plot(
            [],
            [],
            linestyle="none",
            marker="o",
            markerfacecolor="none",
            markeredgecolor="gray",
            label=_seed_label(extra, "other seeds"),
        )
    ax.axhline(1 / 20, color="gray", linestyle=":", label="chance (1/20)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("sorting accuracy")
    ax.set_title(
        "Sorting by frequency, CPU-sized models, equal budget"
        + (f" (lines: {_seed_label(runs, 'one seed')})" if extra else "")
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
