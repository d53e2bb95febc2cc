"""What can be checked of the iOS app without Xcode or a Swift toolchain: the module it imports, the protocol it
speaks, that its visit orders are rounds.py's (the vectors its self-check compares with are what rounds.py
prints), and the shape of the fixes a compiler or a phone would otherwise show. The rules it shares with the
Python agent are data in device_agents/ios/spec/, checked in tests/test_ios_specs.py."""

import re
from pathlib import Path

import yaml

from search.measurement import rounds

IOS = Path(__file__).resolve().parent.parent / "device_agents" / "ios"
APP, CORE = IOS / "DnasAgent", IOS / "DnasAgentCore"
SOURCES = {p.name: p.read_text() for folder in (APP, CORE) for p in folder.glob("*.swift")}


def _body(text: str, start: str) -> str:
    """The braces-balanced block that follows the first `start` in `text` (a function's or a closure's body)."""
    at = text.index(start)
    opening = text.index("{", at)
    depth = 0
    for i in range(opening, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[opening : i + 1]
    raise AssertionError(f"unbalanced braces after {start!r}")


def test_imports_the_swift_package_module_not_the_cocoapods_one():
    imports = {m for text in SOURCES.values() for m in re.findall(r"^import (\w+)", text, re.M)}
    assert "OnnxRuntimeBindings" in imports and "onnxruntime_objc" not in imports


def test_speaks_protocol_2():
    client = SOURCES["Protocol.swift"]
    assert "v1/agent/results" in client and "v1/agent/heartbeat" in client and "protocol: 2" in client
    # Protocol 1's result path only as the fallback after a whole-batch 422, in one method, called from one place.
    assert client.count('v1/agent/jobs/\\(job.job_id)/result"') == 1
    assert 'v1/agent/jobs/\\(job.job_id)/result"' in _body(client, "func result(_ job: BatchJob")
    reporting = SOURCES["Reporting.swift"]
    assert "client.result(" in _body(reporting, "case .postEachOnItsOwn:")


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
    assert body.index("report(batch, results: [], failures: failures, client)") < body.index("downloadModel")


def test_every_file_that_needs_no_uikit_is_in_the_swift_package():
    """`swift build` in device_agents/ios compiles DnasAgentCore/ in Swift 6 mode; the app compiles it too.
    What stays in DnasAgent/ is there because it needs an Apple-only module."""
    package = (IOS / "Package.swift").read_text()
    assert package.startswith("// swift-tools-version:6.0")  # Swift 6 language mode: data races are errors
    assert 'path: "DnasAgentCore"' in package
    assert "DnasAgentCore" in yaml.safe_load((IOS / "project.yml").read_text())["targets"]["DnasAgent"]["sources"]
    apple_only = {"UIKit", "SwiftUI", "OnnxRuntimeBindings", "CryptoKit", "os"}
    for path in CORE.glob("*.swift"):
        imports = set(re.findall(r"^(?:@preconcurrency )?import (\w+)", path.read_text(), re.M))
        assert imports <= {"Foundation", "FoundationNetworking"}, (path.name, imports)
    for path in APP.glob("*.swift"):
        imports = set(re.findall(r"^import (\w+)", path.read_text(), re.M))
        assert imports & apple_only, f"{path.name} needs no Apple-only module: move it to DnasAgentCore/"


def test_no_mutable_local_is_captured_by_a_detached_task():
    """A `var` captured by Task.detached's @Sendable closure is an error in Swift 6 mode (`var models` was)."""
    for name, text in SOURCES.items():
        for match in re.finditer(r"Task\.detached", text):
            func_start = text.rfind("func ", 0, match.start())
            declared = set(re.findall(r"\bvar (\w+)", text[func_start : match.start()]))
            closure = _body(text[match.start() :], "{")
            used = set(re.findall(r"\b(\w+)\b", closure))
            assert not declared & used, (name, declared & used)


def test_waits_only_from_serious_and_records_the_thermal_state_by_name():
    measure = SOURCES["Measure.swift"]
    assert "let thermalWaitFrom = ProcessInfo.ThermalState.serious" in measure
    assert "thermalState.rawValue >= thermalWaitFrom.rawValue" in _body(measure, "func waitUntilCool")
    for key in ("thermal_state_before", "thermal_state_at_start", "thermal_state_after", "thermal_wait_from"):
        assert f'"{key}": .string(thermalName(' in measure


def test_results_are_saved_before_posting_inside_a_background_task_that_can_expire():
    loop, background = SOURCES["AgentLoop.swift"], SOURCES["Background.swift"]
    report = _body(loop, "private func report(")
    assert report.index("BackgroundActivity(") < report.index("store.save(") < report.index("deliver(")
    # The give-back's background task begins when the app leaves the foreground, not after the visit in hand.
    assert "BackgroundActivity(" in _body(loop, "func enteredBackground()")
    handler = _body(background, "beginBackgroundTask(withName: name)")
    assert "end()" in handler  # the expiration handler ends the task (iOS kills an app that does not)
    assert "deliverSaved(" in _body(loop, "private func run(")  # a killed app's saved batch goes out next start


def test_a_lost_lease_cannot_be_cleared_by_returning_to_the_foreground():
    loop, background = SOURCES["AgentLoop.swift"], SOURCES["Background.swift"]
    assert "let lease = LeaseState()" in _body(loop, "private func runBatch(")
    lease_state = _body(background, "final class LeaseState")
    assert "$0 = true" in lease_state and "$0 = false" not in lease_state  # set once, never cleared
    assert "lease" not in _body(loop, "func enteredForeground()").lower()


def test_an_outage_of_any_length_is_waited_out():
    run = _body(SOURCES["AgentLoop.swift"], "private func run(")
    transient = _body(run, "catch ProtocolError.transient")
    assert "return" not in transient and "await pauseFor(seconds:" in transient
