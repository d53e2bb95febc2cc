"""The perf-test stand-in's fork server (device_agents/emulator/perf_test_server.py): a launch through it runs
as the server's child, prints and exits exactly as the launch without it, and nothing outlives its owner."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from device_agents.android.connection import AdbConnection
from device_agents.emulator.perf_test_server import ENV, Launcher
from device_agents.emulator.perf_test_standin import GENERATIONS, write_build
from tests.emulator_harness import require_c_compiler, running_emulator


@pytest.fixture
def server():
    launcher = Launcher()
    launcher.start()
    launcher.wait_ready()
    yield launcher
    launcher.stop()


def _model(path: Path) -> Path:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _holders(path: Path) -> list[int]:
    """The processes with `path` open."""
    pids = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == str(path):
                pids.append(int(fd.parts[2]))
        except OSError:
            continue  # a process or descriptor that went away while we looked
    return pids


def _parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))


def _env(build: Path, extra: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != ENV} | {"LD_LIBRARY_PATH": str(build)} | extra


@pytest.mark.timeout(120)  # the FIFO blocks until a reader opens it: a launch that never reads it hangs here
def test_a_launch_through_the_server_runs_as_its_child_with_the_launchers_stdio(tmp_path, server):
    """The model is a FIFO: opening its writing end returns once perf_test's process opened it to read, and
    that process stays blocked in the read until we close it. It is the server's child, not the launcher."""
    require_c_compiler()
    build = write_build(tmp_path / "build")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    launcher = subprocess.Popen([str(build / "onnxruntime_perf_test"), "-r", "1", "model.onnx"], cwd=tmp_path,
                                env=_env(build, server.environment()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    writer = os.open(fifo, os.O_WRONLY)
    try:
        readers = [pid for pid in _holders(fifo) if pid != os.getpid()]
        assert len(readers) == 1 and readers[0] != launcher.pid
        assert _parent(readers[0]) == server.proc.pid  # forked by the server, in the launcher's cwd
        os.write(writer, b"not a model")
    finally:
        os.close(writer)
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 1  # the child's status is the launcher's
    assert out == "" and "INVALID_PROTOBUF" in err and "model.onnx" in err  # its output reached our pipes


def _mask(text: str) -> str:
    """Timings differ between any two runs; everything else must not."""
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", text)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_the_server_and_the_fallback_print_and_exit_alike(tmp_path, server, generation):
    """Every kind of answer either generation gives: help, bad flags, no model, a broken model, a run with
    and without the statistics, stdout and stderr apart and interleaved (as visits.sh's 2>&1 reads them)."""
    require_c_compiler()
    build = write_build(tmp_path / "build", generation=generation)
    model = _model(tmp_path / "relu.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    cases = [["--help"], ["-h"], ["--bogus"], ["-x"], [], ["-r", "0", str(model)], ["-r", "3", "broken.onnx"],
             ["-r", "3", "missing.onnx"], ["-m", "times", "-r", "5", "-x", "1", "-s", "-Z", "-I", str(model)],
             ["-r", "4", str(model), "result.txt"], ["-r", "abc", str(model)]]  # fmt: skip
    binary = str(build / "onnxruntime_perf_test")
    for args in cases:
        for streams in ({"capture_output": True}, {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}):
            fallback, served = (
                subprocess.run([binary, *args], cwd=tmp_path, env=_env(build, extra), text=True, timeout=60, **streams)
                for extra in ({}, server.environment())
            )
            assert served.returncode == fallback.returncode, args
            assert _mask(served.stdout) == _mask(fallback.stdout), args
            assert _mask(served.stderr or "") == _mask(fallback.stderr or ""), args


@pytest.mark.timeout(120)
def test_a_killed_launchers_child_is_killed_and_a_stopped_server_leaves_nothing(tmp_path):
    """As the emulator kills a shell's process group when the host closes the stream, the perf_test that
    group stood for must end; stopping the server ends it and removes its socket."""
    require_c_compiler()
    build = write_build(tmp_path / "build")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    server = Launcher()
    server.start()
    server.wait_ready()
    socket_dir = Path(server.environment()[ENV]).parent
    launcher = subprocess.Popen([str(build / "onnxruntime_perf_test"), "-r", "1", str(fifo)],
                                env=_env(build, server.environment()))  # fmt: skip
    writer = os.open(fifo, os.O_WRONLY)
    (child,) = [pid for pid in _holders(fifo) if pid != os.getpid()]
    pidfd = os.pidfd_open(child)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert select.select([pidfd], [], [], 60)[0] == [pidfd]  # readable: the child exited
    os.close(pidfd)
    os.close(writer)
    server_pid = server.proc.pid
    server.stop()
    assert not socket_dir.exists()
    assert not Path(f"/proc/{server_pid}").exists()


def test_the_emulator_starts_the_server_when_perf_test_is_pushed_and_ends_it_with_itself(tmp_path):
    require_c_compiler()
    build = write_build(tmp_path / "build", generation="absl")
    with running_emulator(tmp_path / "sandbox", "--stock") as emu:
        conn = AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey")
        assert conn.shell(f"echo ${ENV}").output.strip() == ""  # nothing pushed: no server
        for name in ("libc++_shared.so", "onnxruntime_perf_test"):
            conn.push(build / name, f"/data/local/tmp/pt/{name}")
        (server,) = _children(emu.proc.pid)
        res = conn.shell(f"test -n ${ENV} && cd /data/local/tmp/pt && LD_LIBRARY_PATH=. ./onnxruntime_perf_test -h")
        assert (res.returncode, res.output) == (255, "See 'onnxruntime_perf_test --help'.")
        conn.close()
    assert not Path(f"/proc/{server}").exists()  # gone with the emulator, not orphaned


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
