"""Resuming a search: a run killed mid-epoch and resumed ends exactly where an uninterrupted one does; a
different table is refused; metrics rows are never doubled; a longer run stretches the schedule; --beta wins."""

import json

import pytest
import torch

from search.dnas.config import SearchConfig
from search.dnas.run import run_search
from search.dnas.trainer import Searcher
from search.tables.latency import PublishedTable, TableError

BASE = {"epochs": 3, "warmup_epochs": 1, "batch_size": 32, "mode": "hard", "steps_per_epoch": 6, "threads": 1,
        "samples": 1, "checkpoint_every": 4, "lr_theta": 0.05, "workers": 0}  # fmt: skip


@pytest.fixture(scope="module")
def table(mini_table):
    return PublishedTable.from_file(mini_table)


@pytest.fixture(scope="module")
def uninterrupted(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("a")
    run_search(table, "digits", SearchConfig(**BASE), out)
    return out


class Killed(Exception):
    pass


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_killed_mid_epoch_resumes_exactly(table, uninterrupted, tmp_path, monkeypatch):
    original = Searcher.save

    def save_then_die(self, totals=None):
        original(self, totals)
        if (self.epoch, self.phase, self.step) == (1, "theta", 4):  # inside epoch 2's theta phase
            raise Killed

    monkeypatch.setattr(Searcher, "save", save_then_die)
    with pytest.raises(Killed):
        run_search(table, "digits", SearchConfig(**BASE), tmp_path)
    assert [r["epoch"] for r in _rows(tmp_path)] == [1]
    monkeypatch.setattr(Searcher, "save", original)
    summary = run_search(table, "digits", SearchConfig(**BASE), tmp_path)

    a = torch.load(uninterrupted / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert torch.equal(a["net"]["theta"], b["net"]["theta"])  # same position, RNG, data order, optimiser state
    for key, value in a["net"].items():
        assert torch.equal(value, b["net"][key]), key
    assert _rows(tmp_path) == _rows(uninterrupted)  # incl. the epoch whose theta phase was cut in two
    assert summary["data"]["split_seed"] == 0 and summary["data"]["kind"] == "digits"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2, 3]
    assert all(r["val_acc"] is not None for r in _rows(tmp_path))


def test_a_different_table_is_refused_unless_allowed(table, uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path / "run")
    payload = table.to_dict()
    payload["entries"][0]["median_us"] *= 2
    payload["content_sha256"] = "another-table"
    other = PublishedTable.parse(payload)
    cfg = SearchConfig(**{**BASE, "epochs": 4})
    with pytest.raises(TableError, match="allow-table-change"):
        run_search(other, "digits", cfg, tmp_path / "run")
    summary = run_search(other, "digits", cfg, tmp_path / "run", allow_table_change=True)
    assert summary["events"][0]["event"] == "table changed"
    assert summary["latency_table"]["content_sha256"] == "another-table"


def test_resume_never_doubles_rows_stretches_the_schedule_and_takes_the_new_beta(table, uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    # A killed run may have written a row its checkpoint does not hold: the checkpoint is the truth.
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({**_rows(out)[-1], "epoch": 4}) + "\n")
    run_search(table, "digits", SearchConfig(**{**BASE, "epochs": 5, "beta": 2.0}), out)
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[3]["beta"] == 2.0 and rows[2]["beta"] == 0.6
    # The cosine now spans 5 epochs: epoch 4 starts at lr 0.1 * (1 + cos(pi * 3 / 5)) / 2, not at the old end.
    assert rows[3]["lr_w"] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(torch.pi * 3 / 5)).item()))
    assert rows[2]["lr_w"] == pytest.approx(0.05 * (1 + torch.cos(torch.tensor(torch.pi * 2 / 3)).item()))
