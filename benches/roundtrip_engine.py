"""The no-op model of ``cargo bench --bench roundtrip``: answers ``(int_feature, "")``.

Found through ``python_path`` (the Rust Driver) or ``sys.path`` (the Python anchors), by
every worker process whatever its start method.
"""

from __future__ import annotations


class NoopEngine:
    """An Engine whose run costs nothing: what remains of a task's trip is the machinery's."""

    def initialize(self, **kwargs):
        pass

    def run(self, float_features, str_features, int_feature):
        return int_feature, ""


_engine = None


def init_worker():
    """``multiprocessing.Pool`` / ``ProcessPoolExecutor`` initializer: one Engine per worker."""
    global _engine
    _engine = NoopEngine()
    _engine.initialize(config={}, float_feature_names=["f0", "f1"], str_feature_names=["a", "b", "c"])


def run_task(float_features, str_features, int_feature):
    """A task, run by the engine the initializer built."""
    return _engine.run(float_features, str_features, int_feature)
