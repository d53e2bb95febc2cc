"""The conformance suite, run against the reference agent (the local one)."""

import shlex
import sys

from device_agents.conformance import run_suite


def test_local_agent_conforms(tmp_path):
    template = (
        f"{shlex.quote(sys.executable)} -m dnas agent local --server {{server}} --token {{token}} --wait 1 "
        f"--cache-dir {shlex.quote(str(tmp_path / 'cache'))}"
    )
    report = run_suite(template)
    failures = [f"{c.name}: {c.detail}" for c in report.checks if not c.passed]
    assert not failures, failures
    assert len(report.checks) == 9
