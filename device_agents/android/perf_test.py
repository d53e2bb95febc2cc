"""Parse `onnxruntime_perf_test` output, in every variant its builds print.

It does one warm-up run itself, then `-r N` timed runs, and prints an average in milliseconds and, when asked
with `-s`, percentiles in seconds, not the individual runs. Builds differ in wording:
- older (the tool's README sample): `Total iterations:N`, `Average time cost:X ms`, `P50 Latency is Xsec`;
- newer: `Total inference requests: N`, `Average inference time cost: X ms`, `P50 Latency: X s`;
- newest: `Average inference time cost total: X ms`, and `Runs:N` again in the statistics block.
An output with no latency in it, or no count of the runs it timed, is an error, never 0 or a guess.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from search.measurement import rounds

_FLOAT = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_AVERAGE = re.compile(rf"Average (?:inference )?time cost(?: total)?:\s*{_FLOAT}\s*ms")
_PCT_NEW = re.compile(rf"^(Min|Max|P50|P90|P95|P99|P999) Latency:\s*{_FLOAT}\s*s\b", re.M)
_PCT_OLD = re.compile(rf"^(Min|Max|P50|P90|P95|P99|P999) Latency is\s*{_FLOAT}\s*sec", re.M)
_RUNS = re.compile(r"^(?:Total inference requests|Total iterations|Runs):\s*(\d+)\s*$", re.M)


class PerfTestParseError(ValueError):
    pass


def parse_perf_test(text: str) -> dict[str, float]:
    """Statistics in microseconds (median (P50), mean, p90, min, max, ...) and n, the timed runs it printed."""
    out: dict[str, float] = {}
    if m := _AVERAGE.search(text):
        out["mean_us"] = float(m.group(1)) * 1e3
    for name, value in [*_PCT_NEW.findall(text), *_PCT_OLD.findall(text)]:
        out[f"{name.lower()}_us"] = float(value) * 1e6
    if "p50_us" not in out or "mean_us" not in out:
        raise PerfTestParseError(f"no latency in onnxruntime_perf_test output (run it with -s): {text[-300:]!r}")
    if any(v <= 0 for k, v in out.items() if k.endswith("_us")):
        raise PerfTestParseError(f"non-positive latency parsed from onnxruntime_perf_test: {out}")
    counts = {int(n) for n in _RUNS.findall(text)}
    if len(counts) != 1:
        what = "no count of timed runs" if not counts else f"disagreeing run counts {sorted(counts)}"
        raise PerfTestParseError(f"{what} in onnxruntime_perf_test output: {text[-300:]!r}")
    out["n"] = counts.pop()
    if out["n"] < 1:
        raise PerfTestParseError("onnxruntime_perf_test timed no runs")
    return out


# ---- what a build needs on the device -----------------------------------------------------------------------
PERF_TEST = "onnxruntime_perf_test"
# Shared libraries an Android build of onnxruntime_perf_test may link against: libonnxruntime.so when built
# with --build_shared_lib, libc++_shared.so when built with ANDROID_STL=c++_shared. Neither is on a stock phone.
KNOWN_LIBS = ("libonnxruntime.so", "libc++_shared.so")
_ELF_MACHINES = {0x03: "x86", 0x28: "armeabi-v7a", 0x3E: "x86_64", 0xB7: "arm64-v8a"}


def elf_needed(path: Path) -> tuple[str | None, list[str]]:
    """(ABI, DT_NEEDED libraries) of an ELF executable; (None, []) when it is not ELF (a script stand-in).

    Read from the dynamic section, so `libc++_shared.so` is pushed exactly when the build links it."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return None, []
    is64, endian = data[4] == 2, "<" if data[5] == 1 else ">"
    machine = struct.unpack_from(f"{endian}H", data, 18)[0]
    if is64:
        (shoff,) = struct.unpack_from(f"{endian}Q", data, 0x28)
        shentsize, shnum = struct.unpack_from(f"{endian}HH", data, 0x3A)
    else:
        (shoff,) = struct.unpack_from(f"{endian}I", data, 0x20)
        shentsize, shnum = struct.unpack_from(f"{endian}HH", data, 0x2E)
    sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        if is64:
            _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link = struct.unpack_from(
                f"{endian}IIQQQQI", data, off
            )
        else:
            _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link = struct.unpack_from(
                f"{endian}IIIIIII", data, off
            )
        sections.append((sh_type, sh_offset, sh_size, sh_link))
    needed: list[str] = []
    for sh_type, offset, size, link in sections:
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        str_offset = sections[link][1]
        entry = struct.Struct(f"{endian}qQ" if is64 else f"{endian}iI")
        for pos in range(offset, offset + size, entry.size):
            tag, value = entry.unpack_from(data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_offset + value)
                needed.append(data[str_offset + value : end].decode())
    return _ELF_MACHINES.get(machine, hex(machine)), needed


def build_files(perf_test_dir: Path, device_abi: str | None) -> list[Path]:
    """The files to push for a perf-test build: the binary and every shared library beside it. Refuses, with
    what to do, a build for another ABI or one that needs a library the folder does not hold."""
    binary = perf_test_dir / PERF_TEST
    if not binary.is_file():
        raise PerfTestBuildError(
            f"{binary} not found: build onnxruntime_perf_test for Android (docs/agents/android.md) and point "
            "--perf-test-dir at the folder holding it"
        )
    abi, needed = elf_needed(binary)
    if abi is not None and device_abi and not device_abi.startswith(abi.split("-")[0]):
        raise PerfTestBuildError(f"{binary} is built for {abi}, the device is {device_abi}: build with "
                                 f"--android_abi {device_abi}")  # fmt: skip
    libs = sorted(perf_test_dir.glob("*.so"))
    missing = [lib for lib in needed if lib in KNOWN_LIBS and not (perf_test_dir / lib).is_file()]
    if missing:
        hint = {
            "libc++_shared.so": "the NDK's toolchains/llvm/prebuilt/*/sysroot/usr/lib/<arch>-linux-android/"
            "libc++_shared.so",
            "libonnxruntime.so": "the same build folder (built with --build_shared_lib)",
        }
        raise PerfTestBuildError(
            f"{binary.name} needs {', '.join(missing)}, which {perf_test_dir} does not hold: copy "
            + "; ".join(f"{lib} from {hint[lib]}" for lib in missing)
        )
    return [binary, *libs]


def build_version(perf_test_dir: Path, given: str | None) -> str | None:
    """onnxruntime_perf_test prints no version: it is given (--runtime-version), or read from the
    VERSION_NUMBER file of the source tree the user copied beside the binary."""
    if given:
        return given
    version_file = perf_test_dir / "VERSION_NUMBER"
    return version_file.read_text().strip() or None if version_file.is_file() else None


# ---- does the binary start? -----------------------------------------------------------------------------------
# `--help` is the one probe both command-line generations answer with their usage (upstream
# onnxruntime/test/perftest/command_args_parser.cc and main.cc):
# - getopt (up to 1.22): `--help` is the unknown option '-': the usage ("-m [test_mode]: ...") and exit 255;
# - absl flags (1.23 on): absl's help, "--m (Specifies the test mode...)" under "Flags from
#   .../command_args_parser.cc", and exit 1. There `-h` alone prints only "See 'onnxruntime_perf_test --help'."
#   (FLAGS_h is never read; no model is a parse failure), which is why `-h` cannot be the probe.
# Both print the usage line "... [options...] model_path [result_file]". Neither exits 0, so the exit status
# says nothing; the dynamic loader refusing to start it prints no usage at all.
PROBE_ARGS = "--help"
_GENERATIONS = (
    ("absl", re.compile(r"--m\s+\(Specifies the test mode")),
    ("getopt", re.compile(r"-m \[test_mode\]")),
)
_USAGE_LINE = re.compile(r"\[options\.\.\.\]\s+model_path")


def probe_generation(output: str) -> str | None:
    """Which command-line generation answered the `--help` probe: "absl", "getopt", "unknown" (its usage line
    but neither marker: a build of another shape that still started), or None when no usage came back (the
    binary did not start)."""
    for name, marker in _GENERATIONS:
        if marker.search(output):
            return name
    return "unknown" if _USAGE_LINE.search(output) else None


class PerfTestBuildError(ValueError):
    """The perf-test build cannot run on this device; the message says what to do."""


# ---- separate visits ----------------------------------------------------------------------------------------
FIELDS = {
    "round_medians_us": "onnxruntime_perf_test's P50 of each visit: one process per model per round, its own "
    "untimed run, then runs_per_round timed runs (its P50 is the element at index floor(n/2) of the sorted runs)",
    "median_us": "median of the per-visit P50s",
    "mean_us, p10_us, p90_us, std_us": "spread of the per-visit P50s between rounds, not of single runs",
    "n": "timed runs over all visits",
    "visit_min_us, visit_mean_us": "perf_test's own minimum and average of each visit, in round order",
}


def summarise_visits(visits: list[dict[str, float]], runs_per_round: int) -> dict[str, Any]:
    """A batch result from one model's visits (parsed perf_test outputs, in round order)."""
    summary = rounds.summarise_rounds([[v["p50_us"]] for v in visits])
    summary["n"] = sum(int(v.get("n", runs_per_round)) for v in visits)
    return summary
