"""PNG plots of runs (matplotlib, imported only when a plot is drawn)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def timeline_png(tasks: list[dict], path, *, title: str, nodes: list[str], part_names: dict[int, str]) -> Path:
    """Gantt chart of trained tasks (PFF paper figures 4-6): one row per node, one bar per
    (part, chapter), coloured by part and labelled with the chapter; gaps are waiting.
    Adaptive-negative scoring shows as a task of the pseudo-part "negative labels", labelled
    with the chapter the labels are for."""
    plt = _pyplot()
    t0 = min(t["start"] for t in tasks)
    parts = sorted({t["part"] for t in tasks})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.7 * len(nodes)))
    for t in tasks:
        row = len(nodes) - 1 - int(t["node"])
        ax.barh(row, t["end"] - t["start"], left=t["start"] - t0, height=0.6,
                color=colours(parts.index(t["part"]) % 10), edgecolor="black", linewidth=0.4)
        width = t["end"] - t["start"]
        if width > 0:
            ax.text(t["start"] - t0 + width / 2, row, str(int(t["chapter"]) + 1), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(nodes)), list(reversed(nodes)))
    ax.set_xlabel("time since the first task started [s]")
    ax.set_title(title + "  (bar label: chapter)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(parts))]
    ax.legend(handles, [part_names[p] for p in parts], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
