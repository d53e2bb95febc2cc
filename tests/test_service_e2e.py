"""Register, profile, lease, result, publish, fetch: real processes over real HTTP, on SQLite and PostgreSQL."""

import hashlib

import pytest

from search.space.enumerate import enumerate_ops
from search.space.macro import fbnet_space
from search.tables.predict import N_ANCHORS, probe_specs
from tests.service_harness import SMALL_SPACE, register, running_service, start_agent, start_run, wait_for_run


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return request.getfixturevalue("pg_url")


def test_profile_publish_fetch_end_to_end(db_url, tmp_path):
    ops = enumerate_ops(fbnet_space(32, 0.25, num_classes=10, candidates=SMALL_SPACE["candidates"])).ops
    expected_ops = len(ops)
    # A run measures its ops, a call-overhead probe per input shape, and the space's anchor networks.
    probes = probe_specs(ops.values())
    expected_jobs = expected_ops + len(probes) + N_ANCHORS
    with running_service(db_url, tmp_path) as svc, svc.client() as admin:
        device = register(admin, "pixel-test")
        run = start_run(admin, device["id"])
        assert run["status"] == "running" and run["total"] == expected_jobs and run["done"] == 0

        agent = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "2")
        assert agent.wait(timeout=300) == 0
        run = wait_for_run(admin, run["id"])
        assert run["status"] == "published", run
        assert (run["done"], run["failed"], run["table_version"]) == (expected_jobs, 0, 1)

        resp = admin.get(f"/v1/devices/{device['id']}/latency-tables/latest")
        assert resp.status_code == 200
        table = resp.json()
        assert table["version"] == 1 and len(table["entries"]) == expected_ops
        assert table["space_hash"] == run["space_hash"]
        assert table["device"]["fingerprint"]["runtime"] == "onnxruntime"
        assert all(0 < e["p10_us"] <= e["median_us"] <= e["p90_us"] for e in table["entries"])
        assert all(e["n"] == 10 for e in table["entries"])
        # Measured as one batch in interleaved rounds, and published with the rule that prices a network.
        assert {e["context"]["method"] for e in table["entries"]} == {"interleaved"}
        assert {e["context"]["batch"]["jobs"] for e in table["entries"]} == {expected_jobs}
        prediction = table["prediction"]
        assert prediction["rule"] == "overhead-v2" and prediction["constant_from"] == "anchors"
        assert set(prediction["overhead_us"]) == set(probes) and len(prediction["anchors"]) == N_ANCHORS
        assert all(a["measured_us"] > 0 for a in prediction["anchors"])
        # The per-op term, fitted on anchors that compute different numbers of ops, and what decided it.
        assert len({a["computing_ops"] for a in prediction["anchors"]}) > 3
        assert set(prediction["per_op"]["loo_error_pct"]) == {"with_per_op", "constant_only"}
        assert prediction["per_op_us"] == (prediction["per_op"]["fitted_us"] if prediction["per_op"]["kept"] else 0)
        # The ETag identifies the bytes sent (gzip-compressed here, so the weak form of the identity's hash).
        etag = resp.headers["etag"]
        assert resp.headers["content-encoding"] == "gzip"
        assert etag == f'W/"{hashlib.sha256(resp.content).hexdigest()}"'

        again = admin.get(f"/v1/devices/{device['id']}/latency-tables/1", headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""

        csv = admin.get(f"/v1/devices/{device['id']}/latency-tables/latest", params={"format": "csv"})
        assert csv.text.splitlines()[0] == "key,median_us,mean_us,p10_us,p90_us,std_us,n"
        assert len(csv.text.splitlines()) == expected_ops + 1

        # Profiling the same space again reuses every measurement: published at once as version 2, same numbers,
        # but other bytes (its version number): a client holding version 1 is not told it is unchanged.
        rerun = start_run(admin, device["id"])
        assert rerun["status"] == "published" and rerun["table_version"] == 2
        latest = admin.get(f"/v1/devices/{device['id']}/latency-tables/latest", headers={"If-None-Match": etag})
        assert latest.status_code == 200 and latest.headers["etag"] != etag
        v2 = latest.json()
        assert v2["version"] == 2
        assert v2["entries"] == table["entries"] and v2["prediction"] == table["prediction"]  # the same numbers...
        assert v2["content_sha256"] == table["content_sha256"]  # ...and so the same content hash
        versions = admin.get(f"/v1/devices/{device['id']}/latency-tables").json()
        assert [v["version"] for v in versions] == [1, 2]

        cmp = admin.get("/v1/latency-tables/compare", params={"a": f"{device['id']}:1", "b": f"{device['id']}:2"})
        assert cmp.status_code == 200 and cmp.json()["shared_ops"] == expected_ops
        assert cmp.json()["median_ratio"] == pytest.approx(1.0)
        png = admin.get(
            "/v1/latency-tables/compare", params={"a": f"{device['id']}:1", "b": f"{device['id']}:2", "format": "png"}
        )
        assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
