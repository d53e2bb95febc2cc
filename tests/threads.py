"""How many torch (OpenMP) threads a test process may use.

torch starts one intra-op thread per core, and OpenMP's threads spin while they wait for work. Under
pytest-xdist (`make test`'s parallel part: one worker per core) every worker, and every `dnas search` or
`dnas train` a test starts, would run that many: two workers on two cores kept four spinning threads busy, and
the searches ran 4 to 7 times slower than alone (test_cli_search_then_train: 257 s against 36 s). So a worker
gets its share of the cores, and tests/conftest.py puts that share in OMP_NUM_THREADS and MKL_NUM_THREADS
before torch is imported, where the subprocesses a test starts inherit it.
"""

from __future__ import annotations

import os

# The most a test's search asks for: what the search tests always used, so a run without xdist on a large
# machine computes what it did before (results of a float reduction depend on its thread count).
MOST = 2


def torch_threads() -> int:
    """This process's share of the cores it may run on: all of them (at most MOST) without xdist, else a
    worker's share (PYTEST_XDIST_WORKER_COUNT workers), never less than one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) if os.environ.get("PYTEST_XDIST_WORKER") else 1
    return max(1, min(MOST, cores // workers))
