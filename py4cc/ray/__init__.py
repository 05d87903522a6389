"""The Ray backend: Engine actors on a Ray cluster (see :mod:`py4cc.ray.backend`).

Built on :mod:`py4cc.core`; it never imports :mod:`py4cc.local`. Ray itself is imported only
when a Driver with ``backend="ray"`` starts.
"""
