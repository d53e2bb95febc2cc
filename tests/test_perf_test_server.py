"""The perf-test stand-in's fork server (device_agents/emulator/perf_test_server.py): a launch through it runs
as the server's child, prints and exits exactly as the launch without it, and nothing outlives its owner."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import struct
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


def _served_launch(build: Path, server: Launcher, fifo: Path) -> tuple[subprocess.Popen, int, int]:
    """Start a launch whose model is a FIFO: opening its writing end returns once perf_test's process opened
    it to read, and that process stays blocked in the read until the writer closes. Returns the launcher,
    that process and the writing end."""
    launcher = subprocess.Popen([str(build / "onnxruntime_perf_test"), "-r", "1", fifo.name], cwd=fifo.parent,
                                env=_env(build, server.environment()), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    writer = os.open(fifo, os.O_WRONLY)
    (reader,) = [pid for pid in _holders(fifo) if pid != os.getpid()]
    return launcher, reader, writer


def _finish(launcher: subprocess.Popen, writer: int) -> tuple[int, str, str]:
    os.write(writer, b"not a model")
    os.close(writer)
    out, err = launcher.communicate(timeout=60)
    return launcher.returncode, out, err


@pytest.mark.timeout(120)  # a launch that never opens the FIFO would hang in os.open
def test_a_launch_through_the_server_runs_as_its_child_with_the_launchers_stdio(tmp_path, server):
    require_c_compiler()
    build = write_build(tmp_path / "build")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    launcher, reader, writer = _served_launch(build, server, fifo)
    assert reader != launcher.pid and _parent(reader) == server.proc.pid  # forked by the server
    code, out, err = _finish(launcher, writer)
    assert code == 1  # the child's status is the launcher's
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
                for extra in ({}, server.environment() | {"DNAS_PERF_TEST_SERVER_STRICT": "1"})
            )
            assert served.returncode == fallback.returncode, args
            assert _mask(served.stdout) == _mask(fallback.stdout), args
            assert _mask(served.stderr or "") == _mask(fallback.stderr or ""), args


@pytest.mark.timeout(120)
def test_a_killed_launchers_child_is_killed_and_a_stopped_server_leaves_nothing(tmp_path):
    """As the emulator kills a shell's process group when the host closes the stream, the perf_test that
    group stood for must end, and the server goes on serving; stopping it ends it and removes its socket."""
    require_c_compiler()
    build = write_build(tmp_path / "build")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    server = Launcher()
    server.start()
    server.wait_ready()
    socket_dir = Path(server.environment()[ENV]).parent
    launcher, child, writer = _served_launch(build, server, fifo)
    pidfd = os.pidfd_open(child)
    launcher.kill()
    launcher.communicate()
    assert select.select([pidfd], [], [], 60)[0] == [pidfd]  # readable: the child exited
    os.close(pidfd)
    os.close(writer)
    launcher, child, writer = _served_launch(build, server, fifo)
    assert _parent(child) == server.proc.pid
    assert _finish(launcher, writer)[0] == 1
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


def _strict_relu_run(tmp_path: Path, build: Path, server: Launcher) -> subprocess.CompletedProcess:
    """A launch that must go through the server (exit 126 otherwise)."""
    model = _model(tmp_path / "relu.onnx")
    env = _env(build, server.environment() | {"DNAS_PERF_TEST_SERVER_STRICT": "1"})
    return subprocess.run([str(build / "onnxruntime_perf_test"), "-r", "2", str(model)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.timeout(120)
def test_a_request_cut_off_closes_the_stdio_it_carried_and_the_server_serves_on(tmp_path, server):
    """A launcher killed mid-request: the server must not keep the shell's stdout pipe open (that adb shell
    would wait for EOF until the agent's timeout) and must not stop serving."""
    require_c_compiler()
    build = write_build(tmp_path / "build")
    read_end, write_end = os.pipe()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(server.environment()[ENV])
        socket.send_fds(conn, [struct.pack("I", 1000) + b"cut"], [write_end, write_end, write_end])
    os.close(write_end)
    # EOF arrives only once no process holds the write end: the server closed what it received.
    assert select.select([read_end], [], [], 30)[0] == [read_end] and os.read(read_end, 1) == b""
    os.close(read_end)
    res = _strict_relu_run(tmp_path, build, server)
    assert res.returncode == 0, res.stderr
    assert "Total inference requests: 2" in res.stdout


@pytest.mark.timeout(120)
def test_a_killed_server_takes_its_children_with_it_and_is_started_again(tmp_path, server):
    """The server killed outright (SIGKILL, the OOM killer): a child still running must not go on writing to a
    launcher that has given up, and the next shell's environment brings a new server."""
    require_c_compiler()
    build = write_build(tmp_path / "build")
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    launcher, child, writer = _served_launch(build, server, fifo)
    pidfd = os.pidfd_open(child)
    old = server.proc.pid
    os.kill(old, signal.SIGKILL)
    assert select.select([pidfd], [], [], 30)[0] == [pidfd]  # readable: the child exited with its server
    os.close(pidfd)
    os.close(writer)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 127 and "server went away" in err
    server.environment()  # what every shell asks first: a dead server is started again
    assert server.proc.pid != old
    server.wait_ready()
    res = _strict_relu_run(tmp_path, build, server)
    assert res.returncode == 0, res.stderr
