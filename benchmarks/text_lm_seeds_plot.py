"""Paired differences to Transformer-XL over several `text_lm.py` runs.

Each run (one JSON per seed) gives, per position bucket, each system's
held-out bits per byte minus Transformer-XL's with a paired 95 % bootstrap
interval over documents. That interval says how sure one trained pair is;
it says nothing of how a second training would land. This script puts the
runs side by side, one marker shape per seed (`--out`, a PNG), and
summarises them across seeds (`--summary`, a JSON, and a printed table):
per system and bucket, the seeds' differences, their mean, their standard
deviation and a Student-t 95 % interval of the mean over seeds (each seed
one observation; n - 1 degrees of freedom).

    python benchmarks/text_lm_seeds_plot.py \
        benchmarks/results/text_lm_part1_four_full_seed3.json \
        benchmarks/results/text_lm_part1_four_full_seed4.json \
        benchmarks/results/text_lm_part1_twin_seed3.json \
        --out benchmarks/results/text_lm_part1_seeds.png \
        --summary benchmarks/results/text_lm_part1_seeds.json

A control trained beside Transformer-XL (`xl_twin`) is summarised like any
system: its difference is what training alone moves a result by.

A system missing from a run is summarised over the runs that have it.
"""

import argparse
import json
import math

MARKERS = "osD^v<>ph*"
BASELINE = "xl"


def t_quantile_975(degrees):
    """The 97.5 % quantile of Student's t (SciPy comes with JAX)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, degrees))


def seed_summary(runs, baseline=BASELINE):
    """system -> bucket rows: the seeds' differences and their t interval."""
    systems = []
    for run in runs:
        systems += [s for s in run["results"] if s != baseline and s not in systems]
    summary = {}
    for system in systems:
        having = [run for run in runs if system in run["results"]]
        buckets = [b["bucket"] for b in having[0]["results"][system]["by_position"]]
        rows = []
        for bucket in buckets:
            values, seeds, intervals = [], [], []
            for run in having:
                row = {b["bucket"]: b for b in run["results"][system]["by_position"]}[bucket]
                values.append(row[f"minus_{baseline}"])
                intervals.append(row[f"minus_{baseline}_ci95"])
                seeds.append(run["settings"]["seed"])
            n = len(values)
            mean = sum(values) / n
            entry = {
                "bucket": bucket,
                "seeds": seeds,
                f"minus_{baseline}": values,
                f"minus_{baseline}_ci95": intervals,
                "mean": mean,
                "runs_at_or_below_0": sum(v <= 0 for v in values),
            }
            if n > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
                half = t_quantile_975(n - 1) * sd / math.sqrt(n)
                entry.update(sd=sd, mean_ci95=[mean - half, mean + half])
            rows.append(entry)
        summary[system] = rows
    return summary


def print_summary(summary, baseline=BASELINE):
    print(f"minus {baseline}, over seeds: mean (95 % t interval over seeds) [per seed]")
    for system, rows in summary.items():
        for row in rows:
            ci = row.get("mean_ci95")
            ci_text = f" ({ci[0]:+.3f}..{ci[1]:+.3f})" if ci else ""
            per_seed = ", ".join(
                f"s{s} {v:+.3f}" for s, v in zip(row["seeds"], row[f"minus_{baseline}"])
            )
            print(f"  {system:18s} {row['bucket']:>7s}: {row['mean']:+.3f}{ci_text} [{per_seed}]")


def plot(runs, path, baseline=BASELINE):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = []
    for run in runs:
        systems += [s for s in run["results"] if s != baseline and s not in systems]
    buckets = [b["bucket"] for b in runs[0]["results"][systems[0]]["by_position"]]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    width = 0.8 / (len(systems) * len(runs))
    for si, system in enumerate(systems):
        for ri, run in enumerate(runs):
            if system not in run["results"]:
                continue
            rows = {b["bucket"]: b for b in run["results"][system]["by_position"]}
            offset = (si * len(runs) + ri - (len(systems) * len(runs) - 1) / 2) * width
            xs, ys, lo, hi = [], [], [], []
            for bi, bucket in enumerate(buckets):
                row = rows[bucket]
                xs.append(bi + offset)
                ys.append(row[f"minus_{baseline}"])
                lo.append(row[f"minus_{baseline}"] - row[f"minus_{baseline}_ci95"][0])
                hi.append(row[f"minus_{baseline}_ci95"][1] - row[f"minus_{baseline}"])
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
    ax.legend(fontsize=6, ncol=len(systems))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="text_lm.py JSON files, one per seed")
    p.add_argument("--out", default=None, help="PNG path")
    p.add_argument("--summary", default=None, help="JSON path for the summary over seeds")
    args = p.parse_args(argv)

    runs = []
    for path in args.runs:
        with open(path) as f:
            runs.append(json.load(f))
    summary = seed_summary(runs)
    print_summary(summary)
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump({"runs": args.runs, "systems": summary}, f, indent=1)
        print(f"wrote {args.summary}")
    if args.out:
        plot(runs, args.out)
    return summary


if __name__ == "__main__":
    main()
