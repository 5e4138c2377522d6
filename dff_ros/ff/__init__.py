"""Pure PyTorch Forward-Forward: layers, objectives, negatives, learners, classifiers."""
from dff_ros.ff.layers import LAYER_TYPES, FFDense, FFLayer, length_normalize, register_layer  # noqa: F401
from dff_ros.ff.objectives import ff_loss, goodness  # noqa: F401
from dff_ros.ff.overlay import overlay, overlay_all_labels, overlay_neutral  # noqa: F401
