"""What parts, pseudo-parts and PFF variants are called, wherever they appear (plans, topics,
messages, summaries)."""
from __future__ import annotations

VARIANTS = ("single_layer", "all_layers", "federated")   # the PFF variants (dff_ros.pff.plan)
NEGATIVES = -1      # the adaptive negative labels' part number (version = the chapter they are for)


def part_names(config) -> dict[int, str]:
    """Part number -> its name: layers 0..L-1, the softmax head L, the negative labels."""
    names = {s.index: f"layer {s.index}" for s in config.layers}
    names[len(config.layers)] = "softmax head"
    names[NEGATIVES] = "negative labels"
    return names
