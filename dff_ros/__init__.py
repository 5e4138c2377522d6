"""dff_ros: distributed Forward-Forward training over ROS 2.

``dff_ros.ff`` (algorithm), ``dff_ros.data`` and ``dff_ros.config`` import without rclpy.
"""
__version__ = "0.1.0"
