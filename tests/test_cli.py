"""The command line as a user runs it: a real subprocess, real files.

Always this checkout's code with this interpreter (`python -m dnas`), never whatever `dnas` PATH finds first
(another virtualenv, a stale install); the console script itself is checked beside this interpreter.
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnxruntime as ort

DNAS = [sys.executable, "-m", "dnas"]


def run(*args: str, check: bool = True, command: list[str] = DNAS) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, check=check, timeout=120)


def test_the_console_script_beside_this_python_runs_the_same_cli():
    script = Path(sysconfig.get_path("scripts")) / "dnas"
    assert script.is_file(), f"no console script at {script}: install the project (pip install -e .)"
    interpreter = Path(script.read_text().splitlines()[0].removeprefix("#!"))
    assert interpreter.resolve() == Path(sys.executable).resolve()  # this interpreter, so this code
    assert run("models", "list", command=[str(script)]).stdout == run("models", "list").stdout


def test_models_describe_json():
    out = json.loads(run("models", "describe", "fbnet_c", "--json").stdout)
    assert {"name", "params", "flops", "resolution", "arch"} <= set(out)
    assert out["name"] == "fbnet_c" and out["resolution"] == 224 and len(out["arch"]) == 22


def test_models_list_names_every_model():
    text = run("models", "list").stdout
    for name in ("fbnet_a", "fbnet_b", "fbnet_c", "fbnet_96_035_1", "mobilenetv2_100", "mobilenetv2_035"):
        assert name in text


def test_models_export_writes_a_model_onnxruntime_runs(tmp_path):
    target = tmp_path / "m.onnx"
    run("models", "export", "mobilenetv2_035", "-o", str(target))
    sess = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((1, 3, 224, 224), np.float32)})[0]
    assert out.shape == (1, 1000)


def test_user_errors_are_one_line_and_exit_1():
    proc = run("models", "describe", "resnet50", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: unknown model 'resnet50'; known: fbnet_a, fbnet_b, fbnet_c, fbnet_96_035_1, "
        "mobilenetv2_100, mobilenetv2_035"
    ]
    proc = run("space", "ops", "--resolution", "4", check=False)
    assert proc.returncode == 1 and "--resolution: Input should be greater than or equal to 16" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_command_that_takes_a_space_takes_the_same_space_options():
    """One definition (search.space.options.SpaceOptions, also the service's request body): the same flags,
    defaults and help wherever a space is given, and its bounds refused before any request is sent."""
    import typer

    from dnas.cli import app
    from search.space.options import SpaceOptions

    root = typer.main.get_command(app)
    space = root.commands["space"].commands  # type: ignore[attr-defined]
    commands = [
        root.commands["profile"],
        root.commands["validate"],
        space["show"],
        space["ops"],
        space["export"],
        space["macs-table"],
    ]  # type: ignore[attr-defined]
    fields = {"--space": "name", "--resolution": "resolution", "--width": "width", "--classes": "num_classes",
              "--head-c": "head_c", "--candidates": "candidates"}  # fmt: skip
    for command in commands:
        by_flag = {flag: p for p in command.params for flag in p.opts}
        for flag, name in fields.items():
            field = SpaceOptions.model_fields[name]
            assert (by_flag[flag].default, by_flag[flag].help) == (field.default, field.description), (command, flag)
    proc = run("profile", "--device", "1", "--server", "http://127.0.0.1:9", "--width", "5", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: --width: Input should be less than or equal to 4"


def test_space_ops_lists_the_unique_operators():
    keys = run("space", "ops").stdout.split()
    assert len(keys) == 112 and len(set(keys)) == 112


def test_db_upgrade(tmp_path):
    from db.migrate import current_revision, head_revision

    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert f"database at {head_revision()}" in run("db", "upgrade", "--db", url).stdout
    newest = max(p.name[:4] for p in (Path(__file__).parents[1] / "db" / "migrations" / "versions").glob("[0-9]*.py"))
    assert current_revision(url) == head_revision() == newest  # the chain reaches the newest migration file
