"""Plot paired differences to Transformer-XL from several `text_lm.py` runs.

Each run (one JSON per seed) gives, per position bucket, each system's
held-out bits per byte minus Transformer-XL's with a paired 95 % bootstrap
interval. This draws them side by side, one marker shape per seed, so a gap
that one seed shows and the other does not is visible at a glance.

    python benchmarks/text_lm_seeds_plot.py \
        benchmarks/results/text_lm_part1_four_seed0.json \
        benchmarks/results/text_lm_part1_four_seed1.json \
        --out benchmarks/results/text_lm_part1_four.png
"""

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MARKERS = "osD^v"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="text_lm.py JSON files, one per seed")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args()

    runs = [json.load(open(path)) for path in args.runs]
    systems = [s for s in runs[0]["results"] if s != "xl"]
    buckets = [b["bucket"] for b in runs[0]["results"][systems[0]]["by_position"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / (len(systems) * len(runs))
    for si, system in enumerate(systems):
        for ri, run in enumerate(runs):
            rows = {b["bucket"]: b for b in run["results"][system]["by_position"]}
            offset = (si * len(runs) + ri - (len(systems) * len(runs) - 1) / 2) * width
            xs, ys, lo, hi = [], [], [], []
            for bi, bucket in enumerate(buckets):
                row = rows[bucket]
                xs.append(bi + offset)
                ys.append(row["minus_xl"])
                lo.append(row["minus_xl"] - row["minus_xl_ci95"][0])
                hi.append(row["minus_xl_ci95"][1] - row["minus_xl"])
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                fmt=MARKERS[ri % len(MARKERS)],
                color=f"C{si}",
                capsize=2,
                label=f"{system}, seed {run['settings']['seed']}",
            )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_xlabel("position in the document")
    ax.set_ylabel("minus Transformer-XL (bits per byte)\nbelow 0 = better")
    steps = runs[0]["settings"]["steps"]
    ax.set_title(
        f"held-out bits per byte minus Transformer-XL, paired 95 % intervals ({steps} steps)"
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=len(systems))
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
