"""The conformance suite, run against the reference agent (the local one), in both protocol versions."""

import os
import shlex
import subprocess
import sys
import urllib.parse

import pytest

from device_agents.conformance import run_suite
from device_agents.emulator.perf_test_standin import GENERATIONS, write_build
from tests.emulator_harness import running_emulator
from tests.service_harness import free_port


def _template(tmp_path, *extra: str) -> str:
    # No token in the command line: the suite hands it over as DNAS_AGENT_TOKEN.
    return (f"{shlex.quote(sys.executable)} -m dnas agent local --wait 1 "
            f"--cache-dir {shlex.quote(str(tmp_path / 'cache'))} " + " ".join(extra))  # fmt: skip


def test_local_agent_conforms_with_batches_and_rounds(tmp_path):
    report = run_suite(_template(tmp_path))
    failures = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
    assert not failures, failures
    names = {c.name for c in report.checks}
    assert {
        "leases a run as one batch",
        "measures in the configured rounds",
        "keeps its lease with heartbeats",
    } <= names


def test_single_job_agent_still_conforms(tmp_path):
    report = run_suite(_template(tmp_path, "--protocol", "1"), quick=True)
    failures = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
    assert not failures, failures
    assert "leases a run as one batch" not in {c.name for c in report.checks}
    assert "declares its protocol version" in {c.name for c in report.checks}


@pytest.mark.timeout(1800)  # ~450 perf_test processes (75 models x 6 visits): 11 min on a saturated 2-core host
@pytest.mark.parametrize("generation", GENERATIONS)
def test_android_agent_on_a_stock_phone_conforms_with_either_perf_test_generation(tmp_path, generation):
    """The Android agent through the ADB emulator acting as a stock phone, measuring with the perf-test
    stand-in as onnxruntime up to 1.22 (getopt) and from 1.23 (absl flags) build it. Quick: the slow heartbeat
    check would run thousands of perf_test processes; the heartbeat itself is the loop's, checked above."""
    build = write_build(tmp_path / "build", generation=generation)
    with running_emulator(tmp_path / "sandbox", "--stock") as emu:
        template = (
            f"{shlex.quote(sys.executable)} -m dnas agent android --wait 1 --adb {emu.address} "
            f"--key {shlex.quote(str(tmp_path / 'adbkey'))} --runner perf-test "
            f"--perf-test-dir {shlex.quote(str(build))} --cache-dir {shlex.quote(str(tmp_path / 'cache'))}"
        )
        report = run_suite(template, quick=True)  # fmt: skip
    failures = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
    assert not failures, failures
    assert {"publishes a table", "leases a run as one batch", "says how it measured"} <= {c.name for c in report.checks}


def test_phone_mode_checks_an_agent_a_person_starts_with_the_printed_token(tmp_path):
    """`--phone`: the suite prints the link and token and waits; here a local agent plays the phone."""
    port = free_port()
    suite = subprocess.Popen(
        [sys.executable, "-m", "device_agents.conformance", "--phone", "--quick", "--port", str(port),
         "--public-url", f"http://127.0.0.1:{port}", "--wait", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    agent = None
    try:
        assert suite.stdout is not None
        lines = []
        for line in suite.stdout:
            lines.append(line)
            if line.strip().startswith("token:"):
                break
        link = next(line.strip() for line in lines if line.strip().startswith("dnas-agent://register?"))
        query = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)
        token = line.split(":", 1)[1].strip()
        assert query == {"server": [f"http://127.0.0.1:{port}"], "token": [token]}
        agent = subprocess.Popen(
            [sys.executable, "-m", "dnas", "agent", "local", "--wait", "1", "--cache-dir", str(tmp_path / "cache")],
            env=os.environ | {"DNAS_AGENT_SERVER": query["server"][0], "DNAS_AGENT_TOKEN": token},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        out = suite.stdout.read()
        assert suite.wait(timeout=600) == 0, "".join(lines) + out
    finally:
        for proc in (suite, agent):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert "FAIL" not in out and "PASS  leases a run as one batch" in out and "PASS  never measures a corrupt" in out
