"""The search against the real service (REST, then offline from the cache), under torchrun, and via the CLI."""

import hashlib
import json
import re
import subprocess
import sys

import httpx
import pytest
import torch

from search.dnas.config import SearchConfig
from search.dnas.run import run_search
from search.dnas.supernet import SuperNet
from search.tables.client import ServiceClient
from search.tables.latency import PublishedTable, TableError, build_lut
from tests.service_harness import free_port, register, running_service, start_agent, start_run, wait_for_run
from tests.tables import MINI
from tests.threads import torch_threads


def _statuses(log: str, path: str) -> list[int]:
    """HTTP statuses the service answered for GETs of `path`, in order, from its (uvicorn) access log."""
    return [int(m) for m in re.findall(rf'"GET {re.escape(path)} HTTP/1\.1" (\d{{3}})', log)]


def test_search_against_a_table_fetched_over_rest_then_offline(tmp_path):
    cache = tmp_path / "cache"
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "search-target")
        run = start_run(admin, device["id"], space=MINI.to_dict(), config={"warmup": 2, "runs": 10})
        agent = start_agent(svc, device["agent_token"], tmp_path, "--exit-when-idle", "--wait", "2")
        assert agent.wait(timeout=300) == 0
        assert wait_for_run(admin, run["id"])["status"] == "published"
        reader = admin.post("/v1/tokens", json={"name": "search"}).json()["token"]
        client = ServiceClient(svc.url, reader, cache_dir=cache)
        path = f"/v1/devices/{device['id']}/latency-tables/latest"
        table = client.table(device["id"])
        assert _statuses(svc.log_text(), path) == [200]
        # The second fetch revalidates: the service answers 304 with no body and the copy comes from the cache.
        assert client.table(device["id"]) == table
        assert _statuses(svc.log_text(), path) == [200, 304]
        auth = {"Authorization": f"Bearer {reader}", "Accept-Encoding": "identity"}
        first = httpx.get(svc.url + path, headers=auth)
        etag = first.headers["etag"]
        assert etag == f'"{hashlib.sha256(first.content).hexdigest()}"'  # the ETag names the bytes sent
        again = httpx.get(svc.url + path, headers=auth | {"If-None-Match": etag})
        assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag)
    # The service is gone: the cached copy keeps the search going.
    offline = ServiceClient(svc.url, reader, cache_dir=cache).table(device["id"])
    assert offline.content_sha256 == table.content_sha256
    cfg = SearchConfig(
        epochs=1, warmup_epochs=0, batch_size=64, threads=torch_threads(), samples=1, steps_per_epoch=15
    )  # what is checked is that it runs offline, not what it finds
    summary = run_search(offline, "digits", cfg, tmp_path / "out")
    assert summary["latency_table"]["device"]["name"] == "search-target"
    with pytest.raises(TableError, match="no cached copy"):
        ServiceClient(svc.url, reader, cache_dir=cache).table(device["id"], version="7")


def test_ddp_two_processes_keep_theta_identical(tmp_path, mini_table):
    table = mini_table
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "search.run", "--table", str(table), "--out", str(tmp_path / "ddp"), "--epochs", "1",
           "--warmup-epochs", "0", "--batch-size", "32", "--threads", "1", "--samples", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # rank 0 writes once
    assert rows[0]["theta_rank_divergence"] == 0.0
    assert rows[0]["weight_rank_divergence"] == 0.0  # DDP averaged the weights' gradients too
    assert rows[0]["val_acc"] is not None  # the held-out split, evaluated across both ranks
    assert rows[0]["lr_w"] == pytest.approx(0.2)  # lr_w 0.1 x 2 processes (linear scaling)
    ckpt = torch.load(tmp_path / "ddp" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["world"] == 2 and len(ckpt["ranks"]) == 2  # both ranks' RNG states, for an exact resume
    assert not torch.equal(ckpt["ranks"][0]["rng_cpu"], ckpt["ranks"][1]["rng_cpu"])  # independent Gumbel draws
    # Theta moved: the trained theta (checkpoint) against the super net's initial one, built the same way.
    before = SuperNet(MINI, build_lut(MINI, PublishedTable.from_file(table))).theta.detach()
    after = ckpt["net"]["theta"]
    assert after.shape == before.shape
    assert (after - before).abs().max() > 1e-3, "theta did not move in a theta epoch"
    summary = json.loads((tmp_path / "ddp" / "search.json").read_text())
    assert summary["expected_latency_ms"] > 0


def test_cli_search_then_train(tmp_path, mini_table):
    table = mini_table
    out = tmp_path / "cli"
    search = subprocess.run(
        [sys.executable, "-m", "dnas", "search", "--table", str(table), "--out", str(out), "--epochs", "2",
         "--warmup-epochs", "1", "--batch-size", "32", "--threads", str(torch_threads()), "--samples", "1",
         "--steps-per-epoch", "15"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert search.returncode == 0, search.stderr[-2000:]
    train = subprocess.run(
        [sys.executable, "-m", "dnas", "train", "--arch", str(out / "most_likely.json"), "--epochs", "4",
         "-o", str(tmp_path / "trained.json")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    result = json.loads((tmp_path / "trained.json").read_text())
    assert result["val_accuracy"] > 0.8  # digits, 4 epochs from scratch
    bad = subprocess.run([sys.executable, "-m", "dnas", "search", "--out", str(tmp_path / "x")], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode != 0 and "give --table FILE, or --server URL and --device ID" in bad.stderr
