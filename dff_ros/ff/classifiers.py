"""Prediction: goodness (batched over all labels), softmax head, PON heads, CwC class groups."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dff_ros.ff.layers import length_normalize
from dff_ros.ff.objectives import class_goodness, goodness
from dff_ros.ff.overlay import overlay_all_labels, overlay_neutral


def label_candidates(layer, images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[N*C, out]: a first layer's output for every image with every label overlaid; one matmul
    per image when the layer has the shortcut, else C overlays."""
    if hasattr(layer, "forward_label_candidates"):
        return layer.forward_label_candidates(images, num_classes)
    return layer(overlay_all_labels(images, num_classes))


@torch.no_grad()
def goodness_scores(net, images: torch.Tensor, goodness_kind: str = "sum",
                    batch_size: int = 1000, dtype: str = "float32") -> torch.Tensor:
    """[N, C] (float32): goodness summed over all layers but the first, for each candidate label.

    One forward over [batch*C] rows instead of C passes. ``dtype`` bfloat16: the layers' matmuls
    in bf16 (autocast), for scoring negatives, where the order of the scores is what counts.
    """
    if dtype != "float32":
        with torch.autocast("cpu", dtype=getattr(torch, dtype)):
            return goodness_scores(net, images, goodness_kind, batch_size).float()
    c = net.num_classes
    # only layer 0 may read the input, so its output stands for the input of every other layer
    only_first_reads_input = all(s >= 0 for s in net.sources[1:])
    out = []
    for chunk in images.split(batch_size):
        if only_first_reads_input:
            acts = net.forward_all(None, first=label_candidates(net.layers[0], chunk, c))
        else:
            acts = net.forward_all(overlay_all_labels(chunk, c))
        g = sum(goodness(a, goodness_kind) for a in acts[1:])
        out.append(g.view(-1, c))
    return torch.cat(out)


@torch.no_grad()
def neutral_activities(net, images: torch.Tensor) -> list[torch.Tensor]:
    return net.forward_all(overlay_neutral(images, net.num_classes) if net.overlay else images)


@torch.no_grad()
def class_scores(net, images: torch.Tensor, classifier: str, goodness_kind: str = "sum",
                 batch_size: int = 1000) -> torch.Tensor:
    """[N, C] scores whose argmax is the prediction of ``classifier``."""
    if classifier == "goodness":
        return goodness_scores(net, images, goodness_kind, batch_size)
    out = []
    for chunk in images.split(batch_size):
        acts = neutral_activities(net, chunk)
        if classifier == "softmax":
            out.append(F.log_softmax(net.head(net.head_features(acts)), dim=1))
        elif classifier in ("pon_last", "pon_all"):
            logp = [F.log_softmax(h(length_normalize(a)), dim=1) for h, a in zip(net.pon_heads, acts)]
            out.append(logp[-1] if classifier == "pon_last" else torch.stack(logp).sum(0))
        elif classifier in ("cwc_last", "cwc_all"):
            logp = [F.log_softmax(class_goodness(a, net.num_classes), dim=1) for a in acts]
            out.append(logp[-1] if classifier == "cwc_last" else torch.stack(logp).sum(0))
        else:
            raise ValueError(f"unknown classifier {classifier!r}")
    return torch.cat(out)


def accuracy(net, images: torch.Tensor, labels: torch.Tensor, classifier: str,
             goodness_kind: str = "sum", batch_size: int = 1000) -> float:
    pred = class_scores(net, images, classifier, goodness_kind, batch_size).argmax(dim=1)
    return float((pred == labels).float().mean())
