"""Which jobs a claim leases, on SQLite and PostgreSQL migrated to head: the oldest runnable job of the device
first (an expired lease as much as a queued job), then the rest of its group and config in id order, never a
done job, a job held under a live lease, a job out of attempts, or another device's job; a job of no group
alone. The claim is one UPDATE ... RETURNING over the partial indexes of pending jobs (migration 0009); these
are the rules its SQL must keep, whatever the plan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from db import migrate
from db.engine import make_engine, make_sessionmaker
from db.models import Device, Job, Operator
from profiler_service.queue import claim_batch, claim_next
from profiler_service.timeutil import as_utc, utcnow

DEVICE, OTHER = 1, 2


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sessions(request: pytest.FixtureRequest) -> Iterator:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    migrate.upgrade(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def _seed(sessions, jobs: list[dict]) -> None:
    """Two devices, one operator, and these jobs with ids in list order (id = position + 1)."""
    now = utcnow()
    with sessions() as s:
        devices = [{"id": d, "name": f"d{d}", "platform": "linux", "properties": {}, "token_hash": f"{d}" * 64,
                    "created_at": now} for d in (DEVICE, OTHER)]  # fmt: skip
        s.execute(insert(Device), devices)
        s.execute(insert(Operator), [{"key": "op", "spec": {}, "created_at": now}])
        rows = [{"id": i, "device_id": DEVICE, "op_key": "op", "config_hash": "c1", "config": {}, "generation": i,
                 "status": "queued", "attempts": 0, "max_attempts": 3, "created_at": now} | job
                for i, job in enumerate(jobs, start=1)]  # fmt: skip
        s.execute(insert(Job), rows)
        s.commit()


def _claim(sessions, max_jobs: int = 10) -> tuple[list[int], int]:
    with sessions() as s:
        jobs, group = claim_batch(s, device_id=DEVICE, lease_seconds=60, max_jobs=max_jobs)
        return [j.id for j in jobs], group


def test_a_claim_takes_the_oldest_runnable_job_and_its_group_in_id_order(sessions):
    past, future = utcnow() - timedelta(minutes=1), utcnow() + timedelta(minutes=5)
    _seed(sessions, [
        {"batch_group": "A", "status": "done"},                                          # 1 measured
        {"batch_group": "B", "device_id": OTHER},                                        # 2 another device's
        {"batch_group": "A", "status": "leased", "attempts": 1, "lease_expires_at": past},  # 3 expired: oldest
        {"batch_group": "A", "status": "leased", "attempts": 1, "lease_expires_at": future},  # 4 held
        {"batch_group": "A", "attempts": 3},                                             # 5 out of attempts
        {"batch_group": "A", "config_hash": "c2"},                                       # 6 another config
        {"batch_group": "A"},                                                            # 7
        {"batch_group": "B"},                                                            # 8
        {"batch_group": None},                                                           # 9 alone
        {"batch_group": "B"},                                                            # 10
        {"batch_group": "B"},                                                            # 11
        {"batch_group": "B", "status": "failed"},                                        # 12
    ])  # fmt: skip
    assert _claim(sessions) == ([3, 7], 2)
    assert _claim(sessions, max_jobs=2) == ([6], 1)  # group A's other config, a batch of its own
    assert _claim(sessions, max_jobs=2) == ([8, 10], 3)  # the group's runnable jobs, more than the batch
    assert _claim(sessions) == ([9], 1)
    assert _claim(sessions) == ([11], 1)
    assert _claim(sessions) == ([], 0)

    with sessions() as s:
        leased = {j.id: j for j in s.scalars(select(Job).where(Job.status == "leased"))}
    assert set(leased) == {3, 4, 6, 7, 8, 9, 10, 11}
    assert leased[3].attempts == 2 and leased[7].attempts == 1  # the expired lease spent its second attempt
    assert leased[3].lease_token == leased[7].lease_token != leased[6].lease_token  # one token per batch
    assert as_utc(leased[3].lease_expires_at) > utcnow()


def test_protocol_1_leases_one_job_of_a_group(sessions):
    _seed(sessions, [{"batch_group": "A"}, {"batch_group": "A"}, {"batch_group": None}])
    taken = []
    with sessions() as s:
        while (job := claim_next(s, device_id=DEVICE, lease_seconds=60)) is not None:
            taken.append((job.id, job.status, job.attempts))
    assert taken == [(1, "leased", 1), (2, "leased", 1), (3, "leased", 1)]
