"""Load at a size CI affords (the full size is bench/load_check.py): many agents and readers, 2 workers, PostgreSQL."""

import pytest

from bench.load_check import run_load


@pytest.mark.postgres
def test_agents_and_readers_at_once_lose_and_double_nothing(pg_url, tmp_path):
    result = run_load(pg_url, tmp_path, agents=20, fetchers=40, fetches=3, workers=2)
    assert result["server_errors_5xx"] == 0 and result["transport_errors"] == 0, result["status_counts"]
    assert result["leased_twice"] == 0
    assert result["results_lost"] == 0 and result["results_doubled"] == 0
    assert result["results_reported"] == result["jobs"] == result["results_stored"]
    assert result["run_status"] == "published"
    assert result["table_fetch"]["fetches"] == 120
