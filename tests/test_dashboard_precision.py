"""The dashboard with an fp32 and an int8 table of one device, over real HTTP (uvicorn on loopback): each table
shows its precision, the precision filter hides the other one, and the compare page's int8 / fp32 map (per
layer and block family, the paper's Fig. 5) has its ratios the right way round. The two tables' numbers are
chosen (answered through the agent API), so every ratio is known: int8 twice the fp32 time for one family,
half for another, three times for the stem and head convs, 1.25x for the rest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.hand_measured import measure_by_hand
from tests.service_harness import Service, register, running_service

CANDIDATES = ["ir_k3_e1", "ir_k5_e6", "skip"]
SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": CANDIDATES}
LAYERS = 22
# int8 / fp32 by the op key's kind (the stem and head are convs); anything else 1.25.
INT8_OVER_FP32 = {"ir_k3_e1": 2.0, "ir_k5_e6": 0.5, "conv_k3": 3.0, "conv_k1": 3.0}


def factor(key: str) -> float:
    """int8 / fp32 for an op key (`ir_k3_e1_g1-cin8-...-int8`, `conv_k3-cin3-...`) or a candidate name."""
    return INT8_OVER_FP32.get(re.sub(r"_g1$", "", key.split("-")[0]), 1.25)


def base(key: str) -> str:
    return key.rsplit("-", 1)[0]  # the key less its dtype


@dataclass
class Dual:
    svc: Service
    device: dict[str, Any]
    other: dict[str, Any]  # a second device with an fp32 table only
    fp32: dict[str, float]  # medians given, by op key
    int8: dict[str, float]

    def bearer(self, token: str | None = None) -> httpx.Client:
        token = token or self.svc.admin_token
        return httpx.Client(base_url=self.svc.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


@pytest.fixture(scope="module")
def dual(tmp_path_factory) -> Iterator[Dual]:
    work = tmp_path_factory.mktemp("dashboard-precision")
    with running_service(f"sqlite:///{work / 'ui.db'}", work) as svc:
        with svc.client() as admin:
            device, other = register(admin, "dual-host"), register(admin, "fp32-only")
        fp32 = measure_by_hand(svc, device, SPACE, lambda key: 10.0 + len(key) % 7)  # v1
        by_op = {base(k): v for k, v in fp32.items()}
        int8 = measure_by_hand(svc, device, SPACE, lambda key: by_op[base(key)] * factor(key), "int8")  # v2
        measure_by_hand(svc, other, SPACE, lambda key: 50.0)
        yield Dual(svc, device, other, fp32, int8)


def listed_versions(html: str, device_id: int) -> list[int]:
    """The versions the device page's table list links to, in order."""
    body = html.split('id="table-list"', 1)[1].split("</table>", 1)[0] if 'id="table-list"' in html else ""
    return [int(v) for v in re.findall(rf'href="/ui/devices/{device_id}/tables/(\d+)">v', body)]


def test_each_table_shows_its_precision_and_the_filter_hides_the_other(dual: Dual) -> None:
    d = dual.device["id"]
    with dual.bearer() as admin:
        every = admin.get(f"/ui/devices/{d}").text
        assert listed_versions(every, d) == [2, 1]
        body = every.split('id="table-list"')[1].split("<tbody>")[1].split("</tbody>")[0]
        assert re.findall(r'<span class="badge prec-[a-z0-9]+">([a-z0-9]+)</span>', body) == ["int8", "fp32"]

        int8_only = admin.get(f"/ui/devices/{d}", params={"precision": "int8"}).text
        assert listed_versions(int8_only, d) == [2]
        assert '<option value="int8" selected>' in int8_only  # the filter says what it shows
        fp32_only = admin.get(f"/ui/devices/{d}", params={"precision": "fp32"}).text
        assert listed_versions(fp32_only, d) == [1]

        none = admin.get(f"/ui/devices/{dual.other['id']}", params={"precision": "int8"})
        assert none.status_code == 200 and listed_versions(none.text, dual.other["id"]) == []
        assert "No int8 table" in none.text

        refused = admin.get(f"/ui/devices/{d}", params={"precision": "int4"})
        assert refused.status_code == 422 and "precision must be fp32 or int8" in refused.text

        overview = admin.get("/ui/").text
        row = next(r for r in re.findall(r"<tr>.*?</tr>", overview, re.S) if "dual-host" in r)
        assert re.search(rf'tables/2">v2</a> <span class="muted">int8</span>, <a href="/ui/devices/{d}/tables/1">v1'
                         r'</a> <span class="muted">fp32</span>', row), row  # fmt: skip
        choices = admin.get("/ui/compare").text
        assert re.search(rf'<option value="{d}:2"[^>]*>dual-host v2 int8 \(space', choices)
        assert re.search(rf'<option value="{d}:1"[^>]*>dual-host v1 fp32 \(space', choices)


def test_the_device_page_offers_its_fp32_against_int8_comparison(dual: Dual) -> None:
    with dual.bearer() as admin:
        page = admin.get(f"/ui/devices/{dual.device['id']}").text
        other = admin.get(f"/ui/devices/{dual.other['id']}").text
    d = dual.device["id"]
    assert f'href="/ui/compare?a={d}:1&amp;b={d}:2">Compare fp32 v1 with int8 v2</a>' in page
    assert 'id="compare-precisions"' not in other  # one precision: nothing to compare


CELL = re.compile(r'<g class="cell( median)?" tabindex="0" data-ratio="([^"]*)">\s*<title>([^<]*)</title>')


def test_the_compare_page_maps_int8_over_fp32_per_layer_and_family(dual: Dual) -> None:
    d = dual.device["id"]
    with dual.bearer() as reader:
        page = reader.get("/ui/compare", params={"a": f"{d}:1", "b": f"{d}:2"})
        assert page.status_code == 200, page.text[:500]
        html = page.text
        swapped = reader.get("/ui/compare", params={"a": f"{d}:2", "b": f"{d}:1"}).text
    assert '<span id="ratio-label">int8 / fp32</span>' in html
    cells = CELL.findall(html)
    layer_cells = [(float(r) if r else None, t) for m, r, t in cells if not m]
    medians = {t.split(":")[0]: float(r) for m, r, t in cells if m}
    assert len(layer_cells) == LAYERS * len(CANDIDATES)
    for j, candidate in enumerate(CANDIDATES):
        column = [layer_cells[i * len(CANDIDATES) + j] for i in range(LAYERS)]
        assert all(f", {candidate}: " in title for _, title in column)
        ratios = [r for r, _ in column if r is not None]
        assert ratios, candidate
        # int8 over fp32, never fp32 over int8: 2.0 for ir_k3_e1 (0.5 would be the inverse), 0.5 for ir_k5_e6.
        assert ratios == pytest.approx([factor(candidate)] * len(ratios)), candidate
        assert medians[candidate] == pytest.approx(factor(candidate))
    # A cell's title carries both latencies; they are the medians given to the two tables.
    title = next(t for _, t in layer_cells if ", ir_k3_e1: " in t)
    found = re.search(r"fp32 ([0-9.]+) us, int8 ([0-9.]+) us", title)
    assert found, title
    fp32_us, int8_us = float(found[1]), float(found[2])
    assert int8_us == pytest.approx(2 * fp32_us) and fp32_us in {round(v, 2) for v in dual.fp32.values()}
    fixed = re.search(r'<p id="fixed-ratios">(.*?)</p>', html, re.S)[1]  # type: ignore[index]
    assert re.search(r"stem <strong>3\.00</strong>", fixed) and re.search(r"head <strong>3\.00</strong>", fixed)
    assert re.search(r"fc <strong>1\.25</strong>", fixed)

    # The other way round, the page says so and every ratio is inverted.
    assert '<span id="ratio-label">fp32 / int8</span>' in swapped
    back = {t.split(":")[0]: float(r) for m, r, t in CELL.findall(swapped) if m}
    assert back["ir_k3_e1"] == pytest.approx(0.5) and back["ir_k5_e6"] == pytest.approx(2.0)


def test_two_devices_of_one_space_compare_by_layer_too_and_the_png_draws_the_map(dual: Dual, tmp_path) -> None:
    d, o = dual.device["id"], dual.other["id"]
    with dual.bearer() as reader:
        html = reader.get("/ui/compare", params={"a": f"{o}:1", "b": f"{d}:1"}).text
    assert "fp32-only v1 fp32" in html and "dual-host v1 fp32" in html
    medians = {t.split(":")[0]: float(r) for m, r, t in CELL.findall(html) if m}
    assert set(medians) == set(CANDIDATES)  # one precision: matched by the whole key, laid out all the same

    env = os.environ | {"DNAS_SERVER": dual.svc.url, "DNAS_TOKEN": dual.svc.admin_token}
    png = tmp_path / "int8-vs-fp32.png"
    proc = subprocess.run(
        [sys.executable, "-m", "dnas", "table", "compare", f"{d}:latest:fp32", f"{d}:latest:int8", "--png", str(png)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "shared ops, median ratio b/a = " in proc.stdout
    with Image.open(png) as img:
        # The layers x families map beside the ops that differ most: the two-panel figure, not the bars alone.
        assert img.format == "PNG" and img.width >= 1800, img.size

    # Two downloaded table files compare the same way without a service; a file that is no table is refused.
    files = []
    with dual.bearer() as reader:
        for version in (1, 2):
            files.append(tmp_path / f"v{version}.json")
            files[-1].write_bytes(reader.get(f"/ui/devices/{d}/tables/{version}/download").content)
    no_service = os.environ | {"DNAS_TOKEN": ""}  # with no token, a command that needs the service exits 1
    offline = subprocess.run([sys.executable, "-m", "dnas", "table", "compare", *map(str, files)],
                             capture_output=True, text=True, timeout=300, env=no_service)  # fmt: skip
    assert offline.returncode == 0 and offline.stdout == proc.stdout, offline.stderr
    (tmp_path / "not.json").write_text('{"entries": []}')
    bad = subprocess.run([sys.executable, "-m", "dnas", "table", "compare", str(files[0]), str(tmp_path / "not.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and "not.json is not a published latency table" in bad.stderr + bad.stdout


def test_the_run_form_starts_a_run_at_the_precision_picked_and_refuses_another(dual: Dual) -> None:
    d = dual.device["id"]
    # 3 rounds, not the tables' 2: a config of its own reuses nothing, so the run queues and can be cancelled.
    form = {"resolution": "32", "width": "0.25", "num_classes": "10", "candidates": CANDIDATES, "warmup": "1",
            "rounds": "3", "runs_per_round": "1", "anchors": "0"}  # fmt: skip
    with dual.bearer() as admin, dual.svc.client() as api:
        before = len(api.get("/v1/profiling-runs", params={"device_id": d}).json())
        refused = admin.post(f"/ui/devices/{d}/runs", data=form | {"precision": "int4"})
        assert refused.status_code == 422 and "precision" in refused.text
        assert len(api.get("/v1/profiling-runs", params={"device_id": d}).json()) == before  # nothing started
        started = admin.post(f"/ui/devices/{d}/runs", data=form | {"precision": "int8"})
        assert started.status_code == 303, started.text[:500]
        run_id = int(started.headers["location"].rsplit("/", 1)[1])
        run = api.get(f"/v1/profiling-runs/{run_id}").json()
        assert run["config"]["precision"] == "int8" and run["config"]["quantization"]["format"] == "QDQ"
        api.post(f"/v1/profiling-runs/{run_id}/cancel").raise_for_status()
