"""Message <-> tensor/config conversion. Needs the generated dff_ros.msg (the ROS build)."""
