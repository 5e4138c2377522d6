"""DFF activation pipeline as plain logic (no ROS): what a hosted layer does with a chunk,
what the master does with the results, and how a model is spread over servers."""
