"""dff_ros: distributed Forward-Forward training over ROS 2.

``dff_ros.ff`` (algorithm), ``dff_ros.data`` and ``dff_ros.config`` import without rclpy.
"""
# The ROS build generates dff_ros.msg / dff_ros.srv into install/; when these sources come
# first on sys.path (development, tests), find those subpackages there too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
