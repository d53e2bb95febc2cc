"""The conformance suite, run against the reference agent (the local one), in both protocol versions."""

import shlex
import sys

from device_agents.conformance import run_suite


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
