"""`dnas table import` over real HTTP: HW-NAS-Bench's Pixel 3 and Raspberry Pi 4 tables become versions of
imported devices, served like any table; every refusal is a 4xx with the reason, and stores nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from db.engine import make_engine, make_sessionmaker
from db.models import Device, LatencyTable, Operator
from search.space.macro import FBNET_CANDIDATES
from search.space.opspec import OpSpec
from search.tables.latency import build_lut
from search.tables.schema import PublishedTable
from tests.hwnasbench_data import PUBLISHED_SUMS_MS, fbnet_part, shared_json, write_pickle
from tests.service_harness import Service, register, running_service

IMPORT = "/v1/latency-tables/import"


def dnas(svc: Service, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
    return subprocess.run([sys.executable, "-m", "dnas", *args], env=env, capture_output=True, text=True,
                          check=check, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> Iterator[tuple[Service, str, Path]]:
    work = tmp_path_factory.mktemp("import")
    url = f"sqlite:///{work / 'import.db'}"
    with running_service(url, work) as service:
        yield service, url, work


def _count(url: str, model: type) -> int:
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        n = s.scalar(select(func.count()).select_from(model)) or 0
    engine.dispose()
    return n


def test_import_publishes_a_served_table_with_provenance_and_the_plain_sum(svc):
    service, _, work = svc
    pickle_path = write_pickle(work / "HW-NAS-Bench-v1_0.pickle")
    out = dnas(service, "table", "import", str(pickle_path), "--hw", "pixel3", "--dataset", "cifar100")
    assert "imported: device" in out.stdout and "platform imported" in out.stdout, out.stdout
    assert "112 ops, 0 priced 0, no energy published for this device" in out.stdout
    with service.client() as admin:
        device = next(d for d in admin.get("/v1/devices").json() if d["name"] == "hwnasbench-pixel3")
        assert device["platform"] == "imported"
        payload = admin.get(f"/v1/devices/{device['id']}/latency-tables/latest").raise_for_status().json()
    assert payload["prediction"]["rule"] == "sum" and payload["prediction"]["measured_as"] == "imported"
    prov = payload["provenance"]
    assert prov["measured_as"] == "imported" and prov["metric"] == "latency" and prov["dataset"] == "cifar100"
    assert "ICLR 2021" in prov["citation"] and "HW-NAS-Bench" in prov["source"]
    assert "ms" in prov["units"]["latency"] and "x 1000" in prov["units"]["latency"]
    assert payload["config"]["measured_as"] == "imported"
    published = fbnet_part()["pixel3_latency"]
    for entry in payload["entries"]:  # ms -> us, the published value kept beside it
        assert entry["context"]["value_ms"] == published[entry["context"]["hwnasbench_name"]]
        assert entry["median_us"] == pytest.approx(entry["context"]["value_ms"] * 1000, rel=1e-12)
    # The search client reads it like any table, and its prediction is the benchmark's own figure.
    table = PublishedTable.parse(payload)
    arch = [FBNET_CANDIDATES[0]] * 22
    assert table.space.resolution == 32 and table.space.head_c == 1504 and table.space.num_classes == 100
    assert table.predict_us(arch) == pytest.approx(PUBLISHED_SUMS_MS[("pixel3", "cifar100")] * 1000, rel=1e-9)
    lut = build_lut(table.space, table)
    assert lut.of_arch([0] * 22) == pytest.approx(table.predict_us(arch), rel=1e-6)


def test_the_json_part_imports_too_and_the_same_numbers_twice_are_one_version(svc):
    service, _, _ = svc
    with service.client() as admin:
        data = shared_json().read_bytes()
        first = admin.post(IMPORT, params={"hw_device": "raspi4"}, content=data)
        again = admin.post(IMPORT, params={"hw_device": "raspi4"}, content=data)
        imagenet = admin.post(IMPORT, params={"hw_device": "raspi4", "dataset": "imagenet"}, content=data)
    assert first.status_code == 201, first.text
    assert again.status_code == 200 and again.json()["table"] == first.json()["table"]
    assert imagenet.status_code == 201 and imagenet.json()["table"]["version"] == first.json()["table"]["version"] + 1
    assert imagenet.json()["device"] == first.json()["device"]
    with service.client() as admin:
        device = first.json()["device"]["id"]
        v1 = admin.get(f"/v1/devices/{device}/latency-tables/1")
        assert v1.headers["Cache-Control"].endswith("immutable")
        payload = v1.json()
        assert payload["space"]["resolution"] == 32 and payload["content_sha256"] == first.json()["table"][
            "content_sha256"]  # fmt: skip
        big = admin.get(f"/v1/devices/{device}/latency-tables/2").json()
    assert big["space"]["resolution"] == 224 and big["provenance"]["dataset"] == "imagenet"
    predicted = PublishedTable.parse(big).predict_us([FBNET_CANDIDATES[0]] * 22)
    assert predicted == pytest.approx(PUBLISHED_SUMS_MS[("raspi4", "imagenet")] * 1000, rel=1e-9)


@pytest.mark.parametrize(
    ("params", "body", "message"),
    [
        ({"hw_device": "pixel3", "width": "0.5"}, "pickle",
         "no ConvNorm_H32_W32_Cin3_Cout8_kernel3_stride1_group1 for stem"),
        ({"hw_device": "pixel3", "head_c": "1984"}, "pickle", "no ConvNorm_H4_W4_Cin352_Cout1984"),
        ({"hw_device": "pixel3", "metric": "power"}, "pickle", "unknown metric 'power'"),
        ({"hw_device": "pixel3", "metric": "energy"}, "pickle", "energy is not latency"),
        ({"hw_device": "edgegpu"}, "json", "no edgegpu_latency part"),
        ({"hw_device": "pixel3"}, "truncated", "truncated"),
        ({"hw_device": "pixel3"}, "corrupt", "not a readable pickle"),
        ({"hw_device": "pixel3"}, "os.system", "global os.system, which is not admitted"),
    ],
    ids=["wrong width", "wrong head", "unknown metric", "energy as latency", "device not in file", "truncated",
         "corrupt", "os.system"],
)  # fmt: skip
def test_refusals_are_422_with_the_reason_and_store_nothing(svc, params, body, message):
    service, url, work = svc
    marker = work / "the-pickle-ran"
    data = {
        "pickle": lambda: write_pickle(work / "ok.pickle").read_bytes(),
        "json": lambda: shared_json().read_bytes(),
        "truncated": lambda: write_pickle(work / "ok.pickle").read_bytes()[:5000],
        "corrupt": lambda: b"\x80\x04" + os.urandom(4096),
        "os.system": lambda: b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
    }[body]()
    before = (_count(url, Device), _count(url, LatencyTable), _count(url, Operator))
    with service.client() as admin:
        resp = admin.post(IMPORT, params={**params, "device_name": "refused-import"}, content=data)
    assert resp.status_code == 422, resp.text
    assert message in resp.json()["detail"]
    assert (_count(url, Device), _count(url, LatencyTable), _count(url, Operator)) == before
    assert not marker.exists()


def test_the_cli_prints_a_refusal_as_one_line(svc, tmp_path):
    service, _, _ = svc
    bad = tmp_path / "bad.pickle"
    bad.write_bytes(write_pickle(tmp_path / "ok.pickle").read_bytes()[:-7])
    out = dnas(service, "table", "import", str(bad), "--hw", "pixel3", check=False)
    assert out.returncode == 1 and "HTTP 422" in out.stderr and "truncated" in out.stderr
    assert "Traceback" not in out.stderr


def test_an_imported_device_has_no_agent_and_cannot_be_profiled(svc):
    service, _, _ = svc
    with service.client() as admin:
        imported = admin.post(IMPORT, params={"hw_device": "pixel3", "device_name": "no-agent"},
                              content=shared_json().read_bytes()).raise_for_status().json()["device"]  # fmt: skip
        run = admin.post("/v1/profiling-runs", json={"device_id": imported["id"], "space": {"resolution": 32}})
        token = admin.post(f"/v1/devices/{imported['id']}/rotate-token")
        net = admin.post(f"/v1/devices/{imported['id']}/network-measurements",
                         json={"space": {"resolution": 32, "num_classes": 100, "head_c": 1504},
                               "arch": ["skip"] * 22})  # fmt: skip
        reader = admin.post("/v1/tokens", json={"name": "r"}).json()["token"]
    for resp, what in ((run, "be profiled"), (token, "be given an agent token"), (net, "measure networks")):
        assert resp.status_code == 409, resp.text
        assert "imported table" in resp.json()["detail"] and what in resp.json()["detail"]
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {reader}"}) as client:
        assert client.post(IMPORT, params={"hw_device": "pixel3"}, content=b"{}").status_code == 403
        assert client.get(f"/v1/devices/{imported['id']}/latency-tables/latest").status_code == 200
    with service.client() as admin:  # an imported device's name is not a measured device's, and vice versa
        phone = register(admin, "real-phone")
        clash = admin.post(IMPORT, params={"hw_device": "pixel3", "device_name": "real-phone"},
                           content=shared_json().read_bytes())  # fmt: skip
        assert clash.status_code == 409 and "android" not in clash.text and phone["platform"] in clash.text


def test_ops_first_known_from_an_import_get_their_onnx_when_a_real_device_profiles_them(svc):
    """The import records ops without ONNX files; a run on a real device must still hand its agent a file
    with a checksum to verify."""
    service, url, _ = svc
    with service.client() as admin:
        admin.post(IMPORT, params={"hw_device": "pixel3", "device_name": "shared-ops"},
                   content=shared_json().read_bytes()).raise_for_status()  # fmt: skip
        phone = register(admin, "measured-phone")
        space = {"resolution": 32, "width": 1.0, "num_classes": 100, "head_c": 1504, "candidates": ["skip"]}
        admin.post("/v1/profiling-runs", json={"device_id": phone["id"], "space": space, "anchors": 0,
                                               "config": {"warmup": 1, "rounds": 1, "runs_per_round": 1}}
                   ).raise_for_status()  # fmt: skip
    engine = make_engine(url)
    with make_sessionmaker(engine)() as s:
        stem = s.get(Operator, "conv_k3-cin3-cout16-s1-h32-w32-b1-float32")
        assert stem is not None and stem.onnx_sha256 and stem.onnx_bytes
    engine.dispose()


def test_imported_tables_compare_like_measured_ones(svc):
    """Fig. 5 of the paper on published numbers: the Raspberry Pi 4 against the Pixel 3, op by op."""
    service, _, _ = svc
    with service.client() as admin:
        ids = {}
        for hw in ("pixel3", "raspi4"):
            answer = admin.post(IMPORT, params={"hw_device": hw, "device_name": f"cmp-{hw}"},
                                content=shared_json().read_bytes()).raise_for_status().json()  # fmt: skip
            ids[hw] = answer["device"]["id"]
        result = admin.get("/v1/latency-tables/compare",
                           params={"a": f"{ids['pixel3']}:latest", "b": f"{ids['raspi4']}:latest"}).json()  # fmt: skip
    parts = fbnet_part()
    assert result["shared_ops"] == 112 and not result["only_in_a"] and not result["only_in_b"]
    top = result["ops"][0]
    name = OpSpec.from_key(top["key"]).hwnasbench_key()
    assert top["ratio"] == pytest.approx(parts["raspi4_latency"][name] / parts["pixel3_latency"][name], rel=1e-9)
    assert result["median_ratio"] > 1  # the Pi is the slower target for most ops


def test_compare_lists_an_op_priced_zero_without_a_ratio():
    """Some HW-NAS-Bench devices price identity skips at 0: the comparison keeps the op and gives it no ratio,
    rather than dividing by zero."""
    from profiler_service.compare import compare

    def table(values: dict[str, float]) -> dict:
        return {"device": {"id": 1}, "version": 1, "content_sha256": "x",
                "entries": [{"key": k, "median_us": v} for k, v in values.items()]}  # fmt: skip

    result = compare(table({"skip": 0.0, "ir": 10.0, "fc": 4.0}), table({"skip": 5.0, "ir": 30.0, "fc": 4.0}))
    assert [r["key"] for r in result["ops"]] == ["ir", "fc", "skip"]
    assert result["ops"][-1]["ratio"] is None and result["median_ratio"] == 3.0
