"""ROS 2 adapters: thin nodes around the pipeline logic in dff_ros.pipeline."""
