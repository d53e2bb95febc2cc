"""The conformance suite, run against the reference agent (the local one), in both protocol versions."""

import os
import shlex
import subprocess
import sys
import urllib.parse

from device_agents.conformance import run_suite
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
