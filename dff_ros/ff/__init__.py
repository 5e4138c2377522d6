"""Pure PyTorch Forward-Forward: layers, objectives, negatives, learners, classifiers."""
from dff_ros.numerics import ensure_strict_gemm

ensure_strict_gemm()   # the same bits for any thread count, or a warning (dff_ros/numerics.py)
from dff_ros.ff.layers import LAYER_TYPES, FFDense, FFLayer, length_normalize, register_layer  # noqa: E402,F401
from dff_ros.ff.objectives import ff_loss, goodness  # noqa: E402,F401
from dff_ros.ff.overlay import overlay, overlay_all_labels, overlay_neutral  # noqa: E402,F401
