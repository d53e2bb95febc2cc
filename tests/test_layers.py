"""The tree shows the flow, and imports run one way along it.

A reader should be able to guess where a thing lives and which way the imports run from the folder names
alone (`search/__init__.py` states the order). This test holds every module to that order, imports inside
functions included, so a shortcut that runs back up the flow fails here rather than in a reviewer's head.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("search", "device_agents", "profiler_service", "db", "dnas", "bench", "tests")

# package -> the project packages its modules may import (prefix match on dotted names).
ALLOWED: dict[str, tuple[str, ...]] = {
    "search.space": ("search.space",),
    "search.measurement": ("search.measurement",),
    "search.data": ("search.data",),
    # db.states (standard library only): the run statuses the client waits on are the service's, spelt once.
    "search.tables": ("search.space", "search.measurement", "search.tables", "db.states"),
    "search.dnas": ("search.space", "search.measurement", "search.tables", "search.data", "search.dnas", "db.states"),
    # The whole job on one host: it starts the embedded service and a local agent, so it stands above them all.
    "search.pipeline": ("search", "device_agents", "profiler_service.local_server"),
    "db": ("db",),
    # search.tables.client alone (no torch): how the service's error bodies read is one rule for both clients.
    "device_agents": ("device_agents", "search.space", "search.measurement", "search.tables.client"),
    "profiler_service": ("profiler_service", "db", "search.space", "search.measurement", "search.tables"),
}
# The conformance suite checks an agent against a real service it starts, so it stands above both.
EXCEPTIONS = {"device_agents/conformance.py": ("profiler_service", "db")}


def _module_files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from search import calibration` names a module too: check the full name.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_down_the_flow(package: str) -> None:
    allowed = ALLOWED[package]
    wrong = []
    for path in _module_files(package):
        rel = path.relative_to(ROOT).as_posix()
        extra = EXCEPTIONS.get(rel, ())
        for line, name in _imports(path):
            if name.split(".")[0] in PROJECT and not _within(name, allowed + extra):
                wrong.append(f"{rel}:{line} imports {name}")
    assert not wrong, f"{package} may import only {allowed}:\n" + "\n".join(wrong)


def test_the_measurement_rule_needs_only_the_standard_library() -> None:
    """rounds.py is pushed to phones and boards beside the runner, where only Python itself is certain."""
    for path in _module_files("search.measurement"):
        for line, name in _imports(path):
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top == "__future__", f"{path.name}:{line} imports {name}"


def test_every_module_of_search_lives_in_a_layer() -> None:
    """No module sits loose in search/ beside the layers (the `python -m search.run` entry point aside)."""
    loose = {p.name for p in (ROOT / "search").glob("*.py")} - {"__init__.py", "run.py"}
    assert not loose, f"modules outside search's layers: {sorted(loose)}"


def test_the_service_starts_without_torch_onnx_or_scipy() -> None:
    """Every service process (each uvicorn worker) imports the app at start; torch, onnx and scipy made that
    3.5 s of CPU instead of 1.1 s. They are imported where an export or a table's heatmap needs them, and a
    service whose files are all exported never does."""
    code = "import sys, profiler_service.app; print(sorted({'torch', 'onnx', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
