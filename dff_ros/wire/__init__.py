"""What goes on the wire: the project's messages and the tensors in them, and the conversions
between messages and the plain objects of the runs and the pipeline. Needs the generated
dff_ros.msg (the ROS build); the topic names are ``dff_ros.topics``."""
