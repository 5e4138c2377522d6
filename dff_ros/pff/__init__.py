"""PFF parameter-passing training (Aktemur et al., "Going Forward-Forward in Distributed Deep
Learning"): nodes exchange layer parameters, not activations, and each recomputes the forward
pass on its own data. Plain logic, no ROS: ``plan`` (who trains what when), ``state`` (a part's
parameters as named tensors), ``store`` (versions received/published), ``worker`` (one node's
schedule). The ROS adapters are ``dff_ros.nodes.server`` / ``master``.
"""
