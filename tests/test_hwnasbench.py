"""Reading HW-NAS-Bench v1.0 safely and mapping it onto our space exactly (search/tables/hwnasbench.py)."""

from __future__ import annotations

import contextlib
import pickle
import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.space.macro import FBNET_CANDIDATES, fbnet_space
from search.tables.hwnasbench import ImportRefused, build_import, read_fbnet_part, summary
from tests.hwnasbench_data import PUBLISHED_SUMS_MS, fbnet_part, shared_json, write_pickle


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_the_benchmark_pickle_reads_back_to_the_published_numbers(tmp_path, protocol):
    """numpy float64 values, as the benchmark stores them, pass the restricted unpickler at every protocol."""
    data = write_pickle(tmp_path / "HW-NAS-Bench-v1_0.pickle", protocol=protocol).read_bytes()
    assert read_fbnet_part(data) == fbnet_part()


def test_a_pickle_written_by_numpy_1_reads_too(tmp_path):
    """numpy < 2 names its scalar constructor numpy.core.multiarray.scalar (the benchmark's file predates 2.0)."""
    data = write_pickle(tmp_path / "p.pickle", protocol=3).read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    old = data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    assert read_fbnet_part(old) == fbnet_part()


def test_the_fbnet_part_as_json_reads_as_the_pickle_does():
    assert read_fbnet_part(shared_json().read_bytes()) == fbnet_part()


def test_a_pickle_naming_os_system_is_refused_and_never_runs_it(tmp_path):
    marker = tmp_path / "ran"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(ImportRefused, match=r"global os\.system.*not admitted"):
        read_fbnet_part(evil, "pickle")
    assert not marker.exists()
    # Hidden inside the real structure, after legitimate numpy scalars: refused all the same.
    doc = pickle.dumps({"fbnet": {"pixel3_latency": {"FC_Cin1504_Cout100": 0.1}}}, protocol=2)
    nested = doc[:-1].replace(b"G?\xb9\x99\x99\x99\x99\x99\x9a", b"cos\nsystem\n(S'touch " + str(marker).encode()
                              + b"'\ntR") + b"."  # fmt: skip
    with pytest.raises(ImportRefused, match=r"os\.system"):
        read_fbnet_part(nested, "pickle")
    assert not marker.exists()


def test_other_globals_and_object_scalars_are_refused_by_name():
    with pytest.raises(ImportRefused, match=r"builtins\.eval"):
        read_fbnet_part(b"cbuiltins\neval\n(S'1'\ntR.", "pickle")
    import numpy

    with pytest.raises(ImportRefused, match="only numbers"):
        read_fbnet_part(pickle.dumps({"fbnet": {"x": {"a": numpy.array(["s"])[0]}}}), "pickle")


def test_truncated_and_corrupt_files_give_one_clear_error(tmp_path):
    data = write_pickle(tmp_path / "p.pickle").read_bytes()
    with pytest.raises(ImportRefused, match="truncated"):
        read_fbnet_part(data[: len(data) // 2])
    with pytest.raises(ImportRefused, match="not a readable pickle"):
        read_fbnet_part(b"\x80\x03" + bytes(range(256)) * 4)
    with pytest.raises(ImportRefused, match="not valid JSON"):
        read_fbnet_part(shared_json().read_bytes()[:1000])
    with pytest.raises(ImportRefused, match="empty"):
        read_fbnet_part(b"")
    with pytest.raises(ImportRefused, match="no 'fbnet' part"):
        read_fbnet_part(b'{"nasbench201": 1}')


@pytest.mark.parametrize(("device", "dataset"), sorted(PUBLISHED_SUMS_MS))
def test_our_space_is_the_benchmarks_so_the_plain_sum_is_its_number(device, dataset):
    """Every op of our 32 px / head 1504 (CIFAR-100) and 224 px (ImageNet) spaces at width 1.0 is in the file,
    and the plain sum over one network gives exactly the benchmark's own figure for it."""
    table = build_import(fbnet_part(), hw_device=device, dataset=dataset)
    assert len(table.entries) == 112  # 108 (layer, candidate) ops + stem, head, pool, fc
    total = sum(table.entries[op.key].latency_ms for op in table.space.network_ops([FBNET_CANDIDATES[0]] * 22))
    assert total == pytest.approx(PUBLISHED_SUMS_MS[(device, dataset)], rel=1e-12)
    assert not table.has_energy and table.zero_priced == ()


def test_a_space_that_does_not_map_is_refused_naming_the_first_op():
    with pytest.raises(ImportRefused, match=r"no ConvNorm_H32_W32_Cin3_Cout8_kernel3_stride1_group1 for stem"):
        build_import(fbnet_part(), hw_device="pixel3", space=fbnet_space(32, 0.5, num_classes=100, head_c=1504))
    with pytest.raises(ImportRefused, match=r"no ConvNorm_H4_W4_Cin352_Cout1984.* for head"):
        build_import(fbnet_part(), hw_device="pixel3", space=fbnet_space(32, 1.0, num_classes=100))


def test_metric_device_and_part_refusals_say_what_there_is():
    parts = fbnet_part()
    with pytest.raises(ImportRefused, match=r"unknown metric 'power'.*latency, energy"):
        build_import(parts, hw_device="pixel3", metric="power")
    with pytest.raises(ImportRefused, match="energy is not latency"):
        build_import(parts, hw_device="pixel3", metric="energy")
    with pytest.raises(ImportRefused, match="unknown device 'tpu'"):
        build_import(parts, hw_device="tpu")
    with pytest.raises(ImportRefused, match="no edgegpu_latency part; it has pixel3_latency, raspi4_latency"):
        build_import(parts, hw_device="edgegpu")


def test_energy_rides_along_and_zero_prices_are_kept():
    """The shared data has neither, so this file takes the Pixel 3's latency part twice over: once as the
    edgegpu latency, with one identity priced 0, and once as its 'energy' (only the structure matters here)."""
    parts = fbnet_part()
    identity = "Skip_H8_W8_Cin64_Cout64_stride1"
    latency = dict(parts["pixel3_latency"]) | {identity: 0.0}
    table = build_import({"edgegpu_latency": latency, "edgegpu_energy": parts["raspi4_latency"]},
                         hw_device="edgegpu")  # fmt: skip
    assert table.has_energy and table.parts == ("edgegpu_latency", "edgegpu_energy")
    zero = [k for k, e in table.entries.items() if e.name == identity]
    assert list(table.zero_priced) == zero and table.entries[zero[0]].latency_us == 0.0
    entry = next(e for e in table.entries.values() if e.name == "FC_Cin1504_Cout100")
    assert entry.latency_ms == parts["pixel3_latency"]["FC_Cin1504_Cout100"]
    assert entry.energy_mj == parts["raspi4_latency"]["FC_Cin1504_Cout100"]
    assert summary({"edgegpu_latency": latency, "edgegpu_energy": latency}) == {
        "edgegpu": {"ops": 225, "zero_priced": 1, "energy": True}
    }


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048), fmt=st.sampled_from(["auto", "pickle", "json"]))
def test_any_bytes_are_read_or_refused_with_the_reason(data, fmt):
    """Whatever arrives, the reader answers with parts or with ImportRefused: never another exception (a 500)."""
    with contextlib.suppress(ImportRefused):
        read_fbnet_part(data, fmt)


FLIPS = st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000), flips=FLIPS)
def test_damaged_copies_of_the_real_pickle_are_refused_or_read_never_crash(tmp_path_factory, cut, flips):
    data = bytearray(write_pickle(tmp_path_factory.mktemp("p") / "p.pickle", protocol=2).read_bytes())
    for at, byte in flips:
        data[at % len(data)] = byte
    try:
        parts = read_fbnet_part(bytes(data[: len(data) - cut % len(data)]))
    except ImportRefused:
        return
    for table in parts.values():  # what does read is numbers, as the file promises
        assert all(isinstance(v, float) for v in table.values())


def test_a_huge_memo_index_is_refused_before_any_allocation():
    """A well-formed pickle whose one PUT names memo slot 2**31 - 16 (one flipped byte of a real file does it):
    C's unpickler sizes its memo array to that index (~16 GB, 30 s of clearing), so under a 1 GiB address
    space limit it refused with a MemoryError. The opcodes are walked first, and the slot is named."""
    payload = b"\x80\x02}r" + struct.pack("<I", 2**31 - 16) + b"."
    code = (
        "import resource, sys\n"
        "from search.tables.hwnasbench import ImportRefused, read_fbnet_part\n"
        "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))\n"
        "try:\n"
        f"    read_fbnet_part({payload!r})\n"
        "except ImportRefused as exc:\n"
        "    print(exc)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "memo slot 2147483632 after 3 opcodes" in res.stdout and "MemoryError" not in res.stdout, res.stdout


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_pickle_cut_anywhere_is_refused_as_truncated(tmp_path, protocol):
    """The opcode walk stops at the cut, and says so, whatever opcode it falls in."""
    data = write_pickle(tmp_path / "p.pickle", protocol=protocol).read_bytes()
    for cut in range(1, len(data), 13):
        with pytest.raises(ImportRefused, match="truncated"):
            read_fbnet_part(data[:cut])
