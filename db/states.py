"""The states a job and a profiling run go through, and which of them are final: one spelling for the models,
the service, the API's schemas and every client that waits on a run.

A job: queued -> leased -> done | failed | cancelled; a lease that expires (or an agent's reported failure
with attempts left) puts it back to queued. profiler_service/queue.py is the only module that writes these.

A run: running -> published | failed | cancelled, each stored once, when it happens, and never changed after
(profiler_service/lifecycle.py is the only module that writes them). A client waiting for a run waits until
its status is in RUN_FINAL: waiting for only some of them is waiting forever on the others.

Only the standard library here: the command-line clients import it without pulling in the service.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    LEASED = "leased"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    RUNNING = "running"
    PUBLISHED = "published"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job an agent may still measure: waiting to be leased, or held under a lease.
JOB_PENDING = frozenset({JobStatus.QUEUED, JobStatus.LEASED})
# A job that ended: measured, given up on, or cancelled (its run cancelled, its device retired).
JOB_FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})
# A job that ended without a measurement: a new run of the same op queues a fresh generation of it.
JOB_UNMEASURED_END = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})

RUN_FINAL = frozenset({RunStatus.PUBLISHED, RunStatus.FAILED, RunStatus.CANCELLED})
