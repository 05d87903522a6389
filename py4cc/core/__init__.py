"""The host's machinery that both backends share, written once (see :mod:`py4cc`).

It imports only the layers below (:mod:`py4cc.protocol`, :mod:`py4cc.options`, ...), never a
backend: :mod:`py4cc.local` and :mod:`py4cc.ray` build on it.
"""
