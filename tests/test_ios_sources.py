"""What can be checked of the iOS app without Xcode: the module it imports, the protocol it speaks, and that
its visit orders are rounds.py's (the vectors its self-check compares with are what rounds.py prints)."""

import re
from pathlib import Path

import yaml

from search.measurement import rounds

IOS = Path(__file__).resolve().parent.parent / "device_agents" / "ios"
SOURCES = {p.name: p.read_text() for p in (IOS / "DnasAgent").glob("*.swift")}


def test_imports_the_swift_package_module_not_the_cocoapods_one():
    imports = {m for text in SOURCES.values() for m in re.findall(r"^import (\w+)", text, re.M)}
    assert "OnnxRuntimeBindings" in imports and "onnxruntime_objc" not in imports


def test_speaks_protocol_2():
    client = SOURCES["Protocol.swift"]
    assert "v1/agent/results" in client and "v1/agent/heartbeat" in client and "protocol: 2" in client
    assert 'v1/agent/jobs/\\(job.job_id)/result"' not in client  # no protocol-1 result path left


def test_self_check_vectors_are_what_rounds_py_prints():
    text = SOURCES["Rounds.swift"]
    checks = re.findall(r"visitOrders\(models: (\d+), rounds: (\d+), seed: ([\d_]+)\) == (\[\[[\d, \[\]]+\]\])", text)
    assert len(checks) == 2
    for models, n_rounds, seed, expected in checks:
        orders = list(rounds.visit_orders(int(models), int(n_rounds), int(seed.replace("_", ""))))
        assert orders == eval(expected)  # a literal list of lists


def test_project_declares_a_bundle_id_and_the_registration_link():
    spec = yaml.safe_load((IOS / "project.yml").read_text())
    target = spec["targets"]["DnasAgent"]
    assert target["settings"]["base"]["PRODUCT_BUNDLE_IDENTIFIER"]
    assert target["dependencies"] == [{"package": "onnxruntime", "product": "onnxruntime"}]
    schemes = target["info"]["properties"]["CFBundleURLTypes"][0]["CFBundleURLSchemes"]
    assert schemes == ["dnas-agent"]


def test_refuses_int8_on_the_coreml_execution_provider_and_records_the_precision():
    """CoreML's execution provider cannot take QDQ models: with it on, an int8 batch fails with the reason before
    anything is downloaded or measured; on the CPU EP int8 is measured and the result says so."""
    measure, loop, proto = SOURCES["Measure.swift"], SOURCES["AgentLoop.swift"], SOURCES["Protocol.swift"]
    assert "let precision: String?" in proto
    refusal = measure[measure.index("func precisionRefusal") :]
    refusal = refusal[: refusal.index("\n}\n")]
    assert 'case "int8":' in refusal and "options.coreML" in refusal and "cannot take QDQ" in refusal
    assert '"precision": .string(config.precisionName)' in measure
    body = loop[loop.index("precisionRefusal(batch.config.precisionName") :]
    assert body.index("client.failure(job, reason: why)") < body.index("downloadModel")
