"""Parts and their versions, below both ``pipeline/`` (DFF) and ``pff/``: a part is a layer
or the softmax head; a version is a part's state after some chapters. ``names`` (part names,
the negative-labels pseudo-part, the PFF variants), ``state`` (a learner's state as named
tensors), ``versions`` (the versions a node has seen)."""
