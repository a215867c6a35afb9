"""Fault injection for the tests: kill this process at a named point, as a crash would.

``SELFTAUGHT_FAULT="PATTERN:N"`` makes the N-th call of ``fault_point(name)`` with a ``name``
matching the glob ``PATTERN`` send SIGKILL to this process (no cleanup, no ``finally``, no
flush: what a power cut or the OOM killer does). Unset, a point costs one dictionary lookup.
The points, named in store.py and the trainer:

- ``append <iteration>/<stage>``   after a chunk of a generation stage reached its .partial file
- ``torn <iteration>/<stage>``     halfway through writing such a chunk (a torn last line)
- ``write <relative path>``        a marker written to its temporary name, not yet renamed
- ``checkpoint <iteration>``       the checkpoint saved and synced, not yet renamed into place
- ``train step``                   after each optimizer step of a fine-tune
- ``delete <iteration>``           a checkpoint renamed away for deletion, not yet deleted

Counting a point's passages is cheaper and surer than killing on a timer: each run of the
fault-injection test (tests/test_faults.py, benchmarks/faults.py) dies at exactly one point.
"""

from __future__ import annotations

import fnmatch
import os
import signal

_hits = 0


def fault_point(name: str) -> None:
    spec = os.environ.get("SELFTAUGHT_FAULT")
    if not spec:
        return
    pattern, _, count = spec.rpartition(":")
    if fnmatch.fnmatchcase(name, pattern):
        global _hits
        _hits += 1
        if _hits == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
