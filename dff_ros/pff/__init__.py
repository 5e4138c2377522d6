"""PFF parameter-passing training (Aktemur et al., "Going Forward-Forward in Distributed Deep
Learning"): nodes exchange layer parameters, not activations, and each recomputes the forward
pass on its own data. Plain logic, no ROS: ``plan`` (who trains what when), ``worker`` (one
node's schedule); a part's state and its versions are ``dff_ros.parts``. The run is
``dff_ros.run.pff``; the ROS adapters are ``dff_ros.nodes.server`` / ``pff_job`` / ``master``.
"""
