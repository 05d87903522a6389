"""The reference workload's Python side: not part of the package rs4py embeds.

* :mod:`py4cc.workload.taskgen` — the seeded task generator (and ``words.txt``, its word
  lists), which the Rust side reproduces bit for bit.
* :mod:`py4cc.workload.harness` — the threaded client and its JSON report, run from the
  repository root as ``python3 -m py4cc.workload.harness``.
"""
