"""The local backend: worker processes on this machine (see :mod:`py4cc.local.pool`).

Built on :mod:`py4cc.core`; it never imports :mod:`py4cc.ray`.
"""
