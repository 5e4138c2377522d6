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
    with the chapter the labels are for. Hatched: the task ran with more torch threads than
    its node's own (the other nodes had no work)."""
    plt = _pyplot()
    t0 = min(t["start"] for t in tasks)
    parts = sorted({t["part"] for t in tasks})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.7 * len(nodes)))
    least = min((t["threads"] for t in tasks if t.get("threads")), default=None)
    hatched = [bool(least and t.get("threads") and t["threads"] > least) for t in tasks]
    for t, more in zip(tasks, hatched):
        row = len(nodes) - 1 - int(t["node"])
        ax.barh(row, t["end"] - t["start"], left=t["start"] - t0, height=0.6,
                color=colours(parts.index(t["part"]) % 10), edgecolor="black", linewidth=0.4,
                hatch="///" if more else None)
        width = t["end"] - t["start"]
        if width > 0:
            ax.text(t["start"] - t0 + width / 2, row, str(int(t["chapter"]) + 1), ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(nodes)), list(reversed(nodes)))
    ax.set_xlabel("time since the first task started [s]")
    ax.set_title(title + "  (bar label: chapter)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(parts))]
    labels = [part_names[p] for p in parts]
    if any(hatched):
        handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="///"))
        labels.append("more threads\n(other nodes idle)")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def curves_png(summary: dict, path, *, title: str) -> Path:
    """A run's learning curves: per-epoch loss and training accuracy of every part, the test
    accuracy (at the end, and after chapters when the summary's ``curve`` has them), and the
    bytes moved per epoch on each link (a distributed run's; from the summary's ``history``)."""
    plt = _pyplot()
    h = summary["history"]
    epochs = list(range(1, h["epochs"] + 1))
    colours = plt.get_cmap("tab10")
    moved = bool(h.get("bytes_per_chapter"))
    fig, axes = plt.subplots(1, 3 if moved else 2, figsize=(15 if moved else 10.5, 4.2))
    ax_loss, ax_acc = axes[:2]
    names = sorted(h["loss"], key=lambda n: (n == "head", n))
    for k, name in enumerate(names):
        style = {"color": colours(k % 10), "marker": "." if h["epochs"] <= 40 else None, "label": name}
        ax_loss.plot(epochs, [_nan(v) for v in h["loss"][name]], **style)
        ax_acc.plot(epochs, [_nan(v) for v in h["accuracy"][name]], **style)
    curve = summary.get("curve") or []
    for k, (name, acc) in enumerate(sorted(summary.get("accuracy", {}).items())):
        colour = colours((len(names) + k) % 10)
        points = [(c["epoch"], c["accuracy"][name]) for c in curve if name in c.get("accuracy", {})]
        if len(points) > 1:   # tested after chapters too
            ax_acc.plot(*zip(*points), color=colour, linestyle="--", linewidth=1)
        ax_acc.scatter([h["epochs"]], [acc], marker="*", s=140, zorder=3, color=colour,
                       edgecolor="black", label=f"test, {name}: {100 * acc:.2f} %")
    ax_loss.set(xlabel="epoch", ylabel="mean minibatch loss (log scale)", title="training loss per part",
                yscale="log")   # FF losses start near 100, the head's below 1
    own = (summary.get("config") or {}).get("train", {}).get("algorithm", "ff") != "ff"
    layer_acc = "its own class scores" if own else "pos/neg samples\non the right side of the threshold"
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0.0, 1.02),
               title=f"training accuracy per part (layer: {layer_acc};\nhead: classified; dashed: test)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    from matplotlib.ticker import MaxNLocator
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if moved:
        _bytes_panel(axes[2], h, colours)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, plt, path)


def _bytes_panel(ax_bytes, h: dict, colours) -> None:
    # bytes: a chapter's traffic spread over its epochs (a chapter's data crosses once)
    ends = h.get("chapter_epochs") or []
    starts = [0] + ends[:-1]
    bottom = [0.0] * len(ends)
    for k, (link, per_chapter) in enumerate(h.get("bytes_per_chapter", {}).items()):
        per_epoch = [b / max(e - s, 1) / 1e6 for b, s, e in zip(per_chapter, starts, ends)]
        ax_bytes.bar([s + 0.5 for s in starts], per_epoch, width=[e - s for s, e in zip(starts, ends)],
                     bottom=bottom, align="edge", color=colours(k % 10), edgecolor="black", linewidth=0.3,
                     label=link)
        bottom = [b + v for b, v in zip(bottom, per_epoch)]
    ax_bytes.set(xlabel="epoch", ylabel="MB per epoch", title="bytes moved per epoch, by link")
    ax_bytes.grid(alpha=0.3, axis="y")
    ax_bytes.set_ylim(top=max(bottom, default=0.0) * 1.45 or 1.0)   # room for the legend
    ax_bytes.legend(fontsize=7, loc="upper right")


def _nan(v):
    return float("nan") if v is None else v


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_plots(summary: dict, config, stem) -> list[Path]:
    """A finished run's PNGs next to its summary: <stem>-curves.png and <stem>-timeline.png."""
    from dff_ros.parts.names import part_names

    if not summary.get("trained", True) or not summary.get("train_seconds"):
        return []   # evaluated saved weights: nothing was trained to plot
    if summary.get("mode") == "pff":
        what = (f"PFF {summary['pff_variant']}, {len(summary['nodes'])} nodes, {summary['train_seconds']:.0f} s, "
                f"utilisation {summary['utilisation']:.0%}")
    else:
        what = f"DFF {summary['schedule']} schedule, {len(summary['nodes']) - 1} servers, {summary['train_seconds']:.0f} s"
    out = []
    if summary.get("history"):
        out.append(curves_png(summary, f"{stem}-curves.png", title=f"{config.name}: {what}"))
    if summary.get("timeline"):
        out.append(timeline_png(summary["timeline"], f"{stem}-timeline.png",
                                nodes=summary.get("timeline_nodes") or summary["nodes"],
                                part_names=part_names(config), title=f"{config.name}: {what}"))
    return out
