"""dff_ros: distributed Forward-Forward training over ROS 2.

``dff_ros.ff`` (algorithm), ``dff_ros.data`` and ``dff_ros.config`` import without rclpy.
"""
# The ROS build generates dff_ros.msg / dff_ros.srv into install/; when these sources come
# first on sys.path (development, tests), find those subpackages there too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"

# Before torch loads: matmuls that give the same bits for any thread count, and OpenMP workers
# that sleep instead of spinning on a busy core (dff_ros/numerics.py; a value you set wins).
from dff_ros.numerics import set_defaults as _set_defaults  # noqa: E402

_set_defaults()
