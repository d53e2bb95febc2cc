"""The GPU path: runs where CUDA exists, skipped elsewhere (no GPU on the CPU-only CI machine)."""

import json

import pytest
import torch

from search.dnas.config import SearchConfig
from search.dnas.run import run_search
from search.dnas.trainer import bf16_supported
from search.tables.schema import PublishedTable
from tests.tables import MINI, measured_table

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_search_runs_on_the_gpu_with_bf16_and_resumes(tmp_path):
    table = PublishedTable.from_file(measured_table(MINI, tmp_path, runs=10))
    bf16 = bf16_supported(torch.device("cuda"))
    cfg = SearchConfig(epochs=2, warmup_epochs=1, batch_size=32, mode="soft", steps_per_epoch=4, samples=1,
                       compute_device="cuda", bf16=bf16, checkpoint_every=2)  # fmt: skip
    summary = run_search(table, "digits", cfg, tmp_path / "out")
    assert summary["compute"]["device"].startswith("cuda")
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=False)
    assert "rng_cuda" in ckpt["ranks"][0]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_acc"] is not None for r in rows) and rows[-1]["ce_theta"] is not None
    cfg.epochs = 3
    run_search(table, "digits", cfg, tmp_path / "out")  # resumes on the GPU from a CPU-loaded checkpoint
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 3
