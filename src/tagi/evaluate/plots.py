"""The plots of an evaluation (PNG, matplotlib's Agg backend: no display needed), written atomically.

- ``methods.png``: Rouge-L of every method, one bar per prompt setting (Def, Def+2Pos);
- ``categories.png``: Rouge-L per category (heat map: methods × categories), one panel per setting;
- ``paired.png``: the reference method minus each method, mean per-task Δ with its interval.
"""

from __future__ import annotations

from pathlib import Path

from tagi.files import write_atomic


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Lay out, write ``fig`` to ``path`` as a 120 dpi PNG (atomically) and release it."""
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    _pyplot().close(fig)


def plot_methods(results: dict, path: Path) -> None:
    plt = _pyplot()
    names = [n for n, m in results["methods"].items() if "scores" in m]
    settings = results["settings"]
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(names) + 2), 4.2))
    for j, s in enumerate(settings):
        vals = [results["methods"][n]["scores"][s]["overall"]["rougeL"] for n in names]
        xs = [i + (j - (len(settings) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(xs, vals, width, label=s)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_ylabel("Rouge-L (unseen tasks)")
    ax.set_title(f"{results['config']['model']['name']}: methods side by side")
    ax.legend()
    _save(fig, path)


def plot_paired(results: dict, path: Path) -> None:
    """Forest plot: the reference minus each method, mean per-task Δ with its interval, per setting."""
    plt = _pyplot()
    paired = results["paired"]
    settings = list(paired["by_setting"])
    names = list(dict.fromkeys(n for s in settings for n in paired["by_setting"][s]))
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(names) * len(settings) + 1.5))
    step = 0.8 / len(settings)
    for j, s in enumerate(settings):
        rows = [(i, paired["by_setting"][s].get(n)) for i, n in enumerate(names)]
        rows = [(i, d) for i, d in rows if d and d["ci_low"] is not None]
        ys = [i + (j - (len(settings) - 1) / 2) * step for i, _ in rows]
        means = [d["mean"] for _, d in rows]
        err = [[d["mean"] - d["ci_low"] for _, d in rows], [d["ci_high"] - d["mean"] for _, d in rows]]
        ax.errorbar(means, ys, xerr=err, fmt="o", capsize=3, label=s)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(
        f"{paired['reference']} minus method: mean per-task Δ Rouge-L ({paired['confidence']:.0%} CI)"
    )
    ax.legend()
    _save(fig, path)


def plot_categories(results: dict, path: Path) -> None:
    plt = _pyplot()
    names = [n for n, m in results["methods"].items() if "scores" in m]
    settings = results["settings"]
    cats = list(results["methods"][names[0]]["scores"][settings[0]]["per_category"]) if names else []
    fig, axes = plt.subplots(
        1,
        len(settings),
        figsize=(max(6.0, 0.9 * len(cats) + 3) * len(settings), 0.4 * len(names) + 2.5),
        squeeze=False,
    )
    for ax, s in zip(axes[0], settings):
        grid = [
            [results["methods"][n]["scores"][s]["per_category"][c]["rougeL"] for c in cats] for n in names
        ]
        ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                color = "white" if v < 60 else "black"
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(cats)), cats, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"Rouge-L per category ({s})")
    _save(fig, path)
