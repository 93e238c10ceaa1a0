#!/usr/bin/env python3
"""Plots ltrain runs: PNG files from each run directory's metrics.jsonl, the runs overlaid.

    scripts/plot_metrics.py RUN_DIR [RUN_DIR ...] [--out DIR] [--labels A B ...]

Writes into DIR (default: plots):
    loss_vs_steps.png    training loss (lines) and validation loss (dashed, markers) against steps
    loss_vs_tokens.png   the same against tokens seen
    lr.png               learning rate
    grad_norm.png        gradient norm before clipping (log scale)
    tokens_per_sec.png   tokens/s per rank (each token counted once, as `ltrain train` logs it)

metrics.jsonl (written by `ltrain train`) holds one JSON object per line: training records
(step, loss, lr, grad_norm, tokens_per_sec, tokens_per_sec_per_rank, tokens, ...) and validation
records (step, val_loss, val_ppl). After a resume or a rollback a step can appear twice: the
last record of a step wins. Validation records carry no token count; it is step x tokens per step.
Needs matplotlib (Debian: python3-matplotlib; scripts/install_deps.sh installs it).
"""
import argparse
import json
import os
import sys

PROG = "plot_metrics.py"


def die(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(2)


def read_run(run_dir):
    """Returns (train, val): dicts step -> record, the last record of each step."""
    if not os.path.isdir(run_dir):
        die(f"run directory '{run_dir}' does not exist")
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        die(f"'{run_dir}' has no metrics.jsonl (is it the train.run_dir of an `ltrain train` run?)")
    train, val, bad = {}, {}, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                bad += 1  # e.g. a line cut short by a kill: skip it
                continue
            if not isinstance(r, dict) or "step" not in r:
                continue
            if "loss" in r:
                train[int(r["step"])] = r
            elif "val_loss" in r:
                val[int(r["step"])] = r
    if bad:
        print(f"{PROG}: warning: {path}: skipped {bad} unreadable line(s)", file=sys.stderr)
    if not train and not val:
        die(f"{path} holds no training or validation records")
    return train, val


def tokens_per_step(train):
    for s, r in sorted(train.items()):
        if s > 0 and "tokens" in r:
            return r["tokens"] / s
    return None


def series(records, key):
    xs = sorted(s for s, r in records.items() if key in r and r[key] is not None)
    return xs, [records[s][key] for s in xs]


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description="PNG plots of ltrain runs' metrics.jsonl, runs overlaid.")
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (train.run_dir)")
    ap.add_argument("--out", default="plots", help="output directory (default: plots)")
    ap.add_argument("--labels", nargs="+", help="legend labels, one per run (default: the directory names)")
    args = ap.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        die(f"--labels gives {len(args.labels)} label(s) for {len(args.runs)} run(s)")

    runs = [read_run(d) for d in args.runs]  # all errors before anything is drawn
    labels = args.labels or [os.path.basename(os.path.normpath(d)) or d for d in args.runs]
    if len(set(labels)) < len(labels):
        labels = [os.path.normpath(d) for d in args.runs]

    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError:
        die("matplotlib is not installed (Debian: apt-get install python3-matplotlib)")

    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        die(f"cannot create --out '{args.out}': {e.strerror}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []

    def figure(name, title, xlabel, ylabel, draw, logy=False):
        fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
        drew = False
        for i, ((train, val), label) in enumerate(zip(runs, labels)):
            drew |= draw(ax, train, val, label, colors[i % len(colors)])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if drew:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        path = os.path.join(args.out, name)
        fig.savefig(path)
        plt.close(fig)
        written.append(path)

    def loss(x_of):
        def draw(ax, train, val, label, color):
            drew = False
            xs, ys = series(train, "loss")
            if xs:
                ax.plot([x_of(train, s) for s in xs], ys, color=color, label=f"{label} train")
                drew = True
            xs, ys = series(val, "val_loss")
            if xs and all(x_of(train, s) is not None for s in xs):
                ax.plot([x_of(train, s) for s in xs], ys, color=color, linestyle="--", marker="o",
                        markersize=4, label=f"{label} val")
                drew = True
            return drew
        return draw

    def by_step(train, s):
        return s

    def by_tokens(train, s):
        tps = tokens_per_step(train)
        return None if tps is None else s * tps

    def simple(key, scale=1.0):
        def draw(ax, train, val, label, color):
            xs, ys = series(train, key)
            if xs:
                ax.plot(xs, [y * scale for y in ys], color=color, label=label)
            return bool(xs)
        return draw

    figure("loss_vs_steps.png", "loss", "step", "loss", loss(by_step))
    figure("loss_vs_tokens.png", "loss against tokens", "tokens", "loss", loss(by_tokens))
    figure("lr.png", "learning rate", "step", "lr", simple("lr"))
    figure("grad_norm.png", "gradient norm (before clipping)", "step", "grad norm", simple("grad_norm"), logy=True)
    figure("tokens_per_sec.png", "throughput", "step", "tokens/s per rank", simple("tokens_per_sec_per_rank"))
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
