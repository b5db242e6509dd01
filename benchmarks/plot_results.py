"""PNG plots of the benchmark results (matplotlib, Agg backend).

Each benchmark script calls its plot function after writing its JSON; run
this file to redraw every PNG from the JSON files in benchmarks/results:

    python benchmarks/plot_results.py [results_dir]
    python benchmarks/plot_results.py --markdown [results_dir]   # README tables
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
COLORS = {
    "infformer_uniform": "tab:blue",
    "infformer_sticky": "tab:cyan",
    "transformer_xl": "tab:orange",
    "compressive": "tab:green",
    "full_attention": "tab:red",
}


def _equal_or_stop(v):
    """'yes' when the peak memory is equal at every context, else where it stopped."""
    if v.get("peak_bytes_equal_at_all_contexts"):
        return "yes"
    return "stops at " + format(v["stopped_at"], ",") if v.get("stopped_at") else "–"


def _load(path):
    with open(path) as f:
        return json.load(f)


def _png(path):
    return os.path.splitext(path)[0] + ".png"


def plot_context_scaling(path):
    data = _load(path)
    rows = data["rows"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for i, unit in enumerate(("layer", "lm")):
        for j, (key, label) in enumerate(
            (
                ("infer_ms", "inference step (ms)"),
                ("train_ms", "train step, fwd+bwd (ms)"),
                ("infer_peak_bytes", "peak memory of a step (MiB, XLA)"),
            )
        ):
            ax = axes[i, j]
            for system, color in COLORS.items():
                pts = [
                    (r["context"], r[key])
                    for r in rows
                    if r["system"] == system and r["unit"] == unit and r.get(key) is not None
                ]
                if not pts and key.endswith("peak_bytes"):
                    pts = [
                        (r["context"], r["state_bytes"])
                        for r in rows
                        if r["system"] == system and r["unit"] == unit and r.get("state_bytes")
                    ]
                if not pts:
                    continue
                xs, ys = zip(*sorted(pts))
                if key.endswith("bytes"):
                    ys = [y / 2**20 for y in ys]
                ax.plot(xs, ys, "o-", color=color, label=system)
                stop = [
                    r
                    for r in rows
                    if r["system"] == system and r["unit"] == unit and "stopped" in r
                ]
                if stop:
                    ax.axvline(stop[0]["context"], color=color, ls=":", lw=1)
                    ax.annotate("stops", (stop[0]["context"], ys[-1]), color=color, fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("tokens absorbed before the step")
            ax.set_title(
                f"{'one decoder layer' if unit == 'layer' else 'small LM'}: {label}", fontsize=10
            )
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    cfg = data.get("config", {})
    fig.suptitle(
        f"context scaling ({data.get('mode')}, {data.get('environment', {}).get('backend', '')}): "
        f"d={cfg.get('dim')}, L={cfg.get('length')}, N=M={cfg.get('num_basis')}, "
        f"batch {cfg.get('batch')}",
    )
    fig.tight_layout()
    fig.savefig(_png(path), dpi=110)
    plt.close(fig)
    print(f"wrote {_png(path)}")


def plot_layer_throughput(path):
    data = _load(path)
    entries = []
    for backend, entry in sorted(data.get("backends", {}).items()):
        for r in entry["results"]:
            entries.append((backend, r))
    sizes = sorted(
        {r["size"] for _, r in entries},
        key=lambda s: ("tiny", "small", "paper").index(s) if s in ("tiny", "small", "paper") else 9,
    )
    ops_ = ["ltm_absorb", "ltm_absorb_sticky", "gaussian_attention"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        groups = sorted({(b, r["mode"]) for b, r in entries if r["size"] == size})
        width = 0.8 / max(1, len(groups))
        for g, (backend, mode) in enumerate(groups):
            ys = []
            for op in ops_:
                match = [
                    r
                    for b, r in entries
                    if b == backend and r["mode"] == mode and r["size"] == size and r["op"] == op
                ]
                ys.append(match[0]["ratio_to_floor"] if match else 0.0)
            xs = [k + g * width for k in range(len(ops_))]
            ax.bar(xs, ys, width, label=f"{backend} {mode}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(2.0, color="r", ls="--", lw=0.8, label="2x target")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(ops_))])
        ax.set_xticklabels(ops_, fontsize=9)
        ax.set_ylabel("time / matmul floor")
        ax.set_title(f"size: {size}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(_png(path), dpi=110)
    plt.close(fig)
    print(f"wrote {_png(path)}")


def plot_memory_stability(path):
    data = _load(path)
    runs = data["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, run in runs.items():
        trace = run.get("trace", [])
        if not trace:
            continue
        xs = [t["tokens"] for t in trace]
        axes[0].plot(xs, [t["rss_mb"] for t in trace], label=name)
        axes[1].plot(xs, [t["ltm_max_abs"] for t in trace], label=name)
        axes[2].plot(xs, [t["step_ms"] for t in trace], label=name)
    axes[0].set_ylabel("process RSS (MiB)")
    axes[1].set_ylabel("max |LTM coefficient|")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("median step time in window (ms)")
    for ax in axes:
        ax.set_xlabel("tokens streamed")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"memory stability ({data.get('mode')})")
    fig.tight_layout()
    fig.savefig(_png(path), dpi=110)
    plt.close(fig)
    print(f"wrote {_png(path)}")


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def markdown_summary(directory=RESULTS_DIR):
    """The README's results tables, from the JSON files (markdown)."""
    out = []
    path = os.path.join(directory, "context_scaling.json")
    if os.path.exists(path):
        d = _load(path)
        cfg = d["config"]
        out.append(
            f"### Context scaling ({d['mode']} mode, {d['environment']['backend']}, "
            f"d={cfg['dim']}, L={cfg['length']}, N=M={cfg['num_basis']}, batch {cfg['batch']})\n"
        )
        out.append(
            "| system | unit | step | t(1k) ms | t(last) ms | t(last)/t(1k) | max t(T)/t(1k) | "
            "peak MiB (XLA) | equal at all T |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|")
        rows = {(r["system"], r["unit"], r["context"]): r for r in d["rows"]}
        for key, v in d["scaling"].items():
            system, unit, m = key.split("/")
            first = rows.get((system, unit, v["first_context"]), {})
            last = rows.get((system, unit, v["last_context"]), {})
            peak = v.get("peak_bytes")
            out.append(
                f"| {system} | {unit} | {m} | {_fmt(first.get(m + '_ms'))} | "
                f"{_fmt(last.get(m + '_ms'))} (T={v['last_context']:,}) | "
                f"{_fmt(v['ratio_last_to_first'])} | {_fmt(v.get('max_ratio_any_context'))} | "
                f"{_fmt(peak / 2**20 if peak else None)} | "
                f"{_equal_or_stop(v)} |"
            )
        out.append("\n| overhead over Transformer-XL (same block) | value |")
        out.append("|---|---|")
        for k, v in d["ltm_overhead_vs_transformer_xl"].items():
            out.append(f"| {k} | {v:+.1%} |")
        paper = d.get("paper_size_blocks")
        if paper:
            for system, e in paper["systems"].items():
                if system == "transformer_xl":
                    continue
                for m in ("infer", "train"):
                    out.append(
                        f"| {system}/paper-size block/{m} | "
                        f"{e[m + '_overhead_vs_transformer_xl']:+.1%} |"
                    )
        out.append(
            "\n| crossover (full attention dearer beyond) | context (tokens) "
            "| fixed-size step (ms) |"
        )
        out.append("|---|---|---|")
        for k, v in d["crossover"].items():
            ctx = v.get("context")
            out.append(
                f"| {k} | {_fmt(ctx, 4) if ctx else v.get('note')} | {_fmt(v.get('fixed_ms'))} |"
            )
    path = os.path.join(directory, "layer_throughput.json")
    if os.path.exists(path):
        d = _load(path)
        out.append("\n### Layer throughput (time / matmul floor)\n")
        out.append(
            "| backend | mode | size | ltm_absorb | ltm_absorb_sticky | gaussian_attention |"
        )
        out.append("|---|---|---|---|---|---|")
        for backend, entry in sorted(d["backends"].items()):
            keyed = {}
            for r in entry["results"]:
                keyed.setdefault((r["mode"], r["size"]), {})[r["op"]] = r
            for (mode, size), ops_ in sorted(keyed.items()):
                cells = [
                    f"{_fmt(ops_[o]['ratio_to_floor'])} ({_fmt(ops_[o]['time_ms'])} ms)"
                    if o in ops_
                    else "–"
                    for o in ("ltm_absorb", "ltm_absorb_sticky", "gaussian_attention")
                ]
                out.append(f"| {backend} | {mode} | {size} | " + " | ".join(cells) + " |")
    path = os.path.join(directory, "memory_stability.json")
    if os.path.exists(path):
        d = _load(path)
        out.append(f"\n### Memory stability ({d['mode']} mode)\n")
        out.append(
            "| run | tokens | RSS growth MiB | RSS slope MiB/1M tok | finite | "
            "max abs LTM coef (warm-up → end) | bounded | tokens/s |"
        )
        out.append("|---|---|---|---|---|---|---|---|")
        for name, r in d["runs"].items():
            out.append(
                f"| {name} | {r['tokens']:,} | {r['rss_growth_mb']:+.1f} | "
                f"{r['rss_slope_mb_per_1m_tokens']:+.1f} | {r['all_finite']} | "
                f"{_fmt(r.get('ltm_max_abs_after_warmup'))} → {_fmt(r['ltm_max_abs_end'])} | "
                f"{r.get('ltm_bounded')} | {r['tokens_per_s']:,.0f} |"
            )
    return "\n".join(out)


PLOTS = {
    "context_scaling": plot_context_scaling,
    "layer_throughput": plot_layer_throughput,
    "memory_stability": plot_memory_stability,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--markdown" in argv:
        argv = [a for a in argv if a != "--markdown"]
        print(markdown_summary(argv[0] if argv else RESULTS_DIR))
        return
    directory = argv[0] if argv else RESULTS_DIR
    for name, fn in PLOTS.items():
        path = os.path.join(directory, f"{name}.json")
        if os.path.exists(path):
            fn(path)


if __name__ == "__main__":
    main()
