"""A fork server for the perf-test stand-in, as Android's zygote starts apps: one process that has imported
numpy and onnxruntime once, and forks a child per `onnxruntime_perf_test` launch.

Why: an agent's batch starts one perf_test process per model and visit (the conformance suite's quick run is
~430 of them), and each fresh Python spent ~0.13 s of CPU starting and importing numpy and onnxruntime before
running a model for milliseconds. The launcher (`perf_test_standin.LAUNCHER_C`) is unchanged as far as the device's
loader and the agent see: it is still the ELF that links libc++_shared.so and checks it. It then connects to
the socket named by `DNAS_PERF_TEST_SERVER` (set in the sandbox's environment once the server listens) and
sends its command line and working directory, with its stdin, stdout and stderr as file descriptors
(SCM_RIGHTS). The server forks; the child takes those descriptors as 0, 1 and 2, the launcher's working
directory and CPU affinity (so `taskset` pins it as it pinned the launcher), and runs the stand-in's
`main(argv)` with the stdio Python would have made; the launcher then exits with the child's status. Without
the variable, or when the connection fails or the server refuses (another interpreter or script), the
launcher execs Python as before (with `DNAS_PERF_TEST_SERVER_STRICT=1` it exits 126 instead, so a test can
prove a launch went through the server). The output and exit statuses are the same either way for what the
stand-in does (tests/test_perf_test_server.py); the child keeps the server's interpreter settings, so
`PYTHON*` variables in a launch's environment (PYTHONWARNINGS, PYTHONIOENCODING) are not applied again.

Lifetime: the emulator starts the server when onnxruntime_perf_test is pushed (`Launcher.start`) and holds
the write end of the server's stdin. When the emulator exits, however it exits, that pipe reaches EOF and the
server kills its children and removes its socket. A child whose launcher dies (the agent closed the stream,
so the emulator killed the shell's process group) is killed too, as the process group's member it stands in
for would have been.

Wire (all integers native-endian, as both ends are this host): the launcher sends a u32 length and that many
bytes of NUL-terminated strings (cwd, N in decimal, N arguments of the exec it stands for: the interpreter,
the script and the command line, then its environment as NAME=value), the three descriptors
riding on the first byte; the server answers `A` (forked) or `R` (refused: fall back), then after `A` the
child's raw wait status as an i32.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import IO

ENV = "DNAS_PERF_TEST_SERVER"
SOCKET_NAME = "perf_test.sock"
# Imported numpy's BLAS must not start worker threads in the server: a fork copies only the forking thread.
SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
MAX_REQUEST = 64 * 1024
PR_SET_PDEATHSIG = 1  # linux/prctl.h
MAIN_CALL = "    raise SystemExit(main())"  # the stand-in's last line, the first frame of its tracebacks


class Server:
    """The accept loop: no threads (it forks), one poll over the listener, the lifeline, each launcher's
    connection (EOF: the launcher died) and each child's pidfd (readable: it exited)."""

    def __init__(self, listener: socket.socket, lifeline: int) -> None:
        self.listener, self.lifeline = listener, lifeline
        self.poll = select.poll()
        self.children: dict[int, tuple[int, socket.socket]] = {}  # pidfd -> (pid, its launcher's connection)
        self.by_conn: dict[int, int] = {}  # connection fd -> pidfd
        for fd in (listener.fileno(), lifeline):
            self.poll.register(fd, select.POLLIN)

    def run(self) -> None:
        try:
            while True:
                for fd, _ in self.poll.poll():
                    if fd == self.lifeline:
                        return  # the emulator is gone
                    if fd == self.listener.fileno():
                        self._accept()
                    elif fd in self.children:
                        self._reap(fd)
                    elif fd in self.by_conn:
                        self._launcher_gone(fd)
        finally:
            for pidfd, (pid, conn) in list(self.children.items()):
                _kill(pid)
                os.waitpid(pid, 0)
                os.close(pidfd)
                conn.close()

    def _accept(self) -> None:
        """One launch. Nothing here may end the server (every later launch would fall back to the slow path)
        or run the stand-in twice: until the child is forked and registered, closing the connection makes the
        launcher exec Python itself; after that, the child is the launch's only run."""
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            request = _read_request(conn)
        except (OSError, ValueError):  # _read_request has closed the descriptors it received
            request = None
        if request is None:
            conn.close()
            return
        fds, cwd, python, script, argv, env = request
        pid, server_pid = -1, os.getpid()
        try:
            if python != sys.executable or Path(script).resolve() != Path(standin_file()).resolve():
                with contextlib.suppress(OSError):
                    _send(conn, b"R")
            else:
                peer_pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
                pid = os.fork()
        except OSError:
            pid = -1
        if pid == 0:  # pragma: no cover - the child ends in os._exit
            code = 1
            try:
                code = self._child(conn, fds, cwd, script, argv, env, peer_pid, server_pid)
            except BaseException:  # before the stand-in ran (a cwd gone, say): say why, as Python would
                with contextlib.suppress(BaseException):
                    os.write(2, traceback.format_exc().encode())
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        if pid < 0:  # refused, or no fork: the launcher runs it itself
            conn.close()
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # cannot watch it: end it before the launcher is told, and it runs the launch itself
            _kill(pid)
            os.waitpid(pid, 0)
            conn.close()
            return
        self.children[pidfd] = (pid, conn)
        self.by_conn[conn.fileno()] = pidfd
        self.poll.register(pidfd, select.POLLIN)
        self.poll.register(conn.fileno(), select.POLLIN)
        try:
            _send(conn, b"A")
        except OSError:  # the launcher died since its request: its run must not go on without it
            self._launcher_gone(conn.fileno())

    def _child(self, conn: socket.socket, fds: list[int], cwd: str, script: str, argv: list[str],
               env: dict[str, str], peer_pid: int, server_pid: int) -> int:  # fmt: skip
        """In the forked child: become the process the launcher would have exec'd, then run the stand-in.
        It dies with the server, however the server dies (SIGKILL, the OOM killer): its launcher has then been
        told the server went away, and nothing may go on writing into that launcher's stdout."""
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server_pid:  # the server died before prctl took hold
            return 1
        for sock in (self.listener, conn, *(c for _, c in self.children.values())):
            sock.close()
        for pidfd in self.children:
            os.close(pidfd)
        os.close(self.lifeline)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        with contextlib.suppress(OSError):  # the launcher is gone already: the server kills this child
            os.sched_setaffinity(0, os.sched_getaffinity(peer_pid))
        sys.argv = [script, *argv]
        sys.stdin, sys.stdout, sys.stderr = _stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
        return run_main(argv)

    def _reap(self, pidfd: int) -> None:
        pid, conn = self.children.pop(pidfd)
        if self.by_conn.pop(conn.fileno(), None) is not None:  # else _launcher_gone unregistered it
            self.poll.unregister(conn.fileno())
        _, status = os.waitpid(pid, 0)
        self.poll.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(OSError):  # the launcher died meanwhile: nobody waits for the status
            _send(conn, struct.pack("i", status))
        conn.close()

    def _launcher_gone(self, fd: int) -> None:
        """The launcher sends nothing after its request, so readable means EOF: it was killed."""
        pid, _ = self.children[self.by_conn.pop(fd)]
        _kill(pid)
        self.poll.unregister(fd)  # the pidfd reports the exit, and _reap closes the connection


def standin_file() -> str:
    from device_agents.emulator import perf_test_standin

    return perf_test_standin.__file__


def run_main(argv: list[str]) -> int:
    """The stand-in's main as `python perf_test_standin.py ARGS` runs it: SystemExit and uncaught exceptions
    become the status the interpreter would exit with, and stdio is flushed."""
    from device_agents.emulator import perf_test_standin

    try:
        code = perf_test_standin.main(argv)
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        _print_traceback(exc)
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):
            stream.flush()
    return code & 0xFF


def _print_traceback(exc: BaseException) -> None:
    """What the interpreter prints for an exception out of `python perf_test_standin.py`: its first frame is
    the script's `raise SystemExit(main())`, where here it is run_main's call."""
    from device_agents.emulator import perf_test_standin

    script = perf_test_standin.__file__
    source = Path(script).read_text().splitlines()
    lineno = source.index(MAIN_CALL) + 1
    start = source[lineno - 1].index("main()")
    entry = traceback.FrameSummary(script, lineno, "<module>", line=source[lineno - 1] + "\n", end_lineno=lineno,
                                   colno=start, end_colno=start + len("main()"))  # fmt: skip
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([entry, *te.stack[1:]])
    print("".join(te.format()), end="", file=sys.stderr)


def _stdio(*, unbuffered: bool) -> tuple[IO[str], IO[str], IO[str]]:
    """Fresh text streams on fds 0-2 with the buffering a new interpreter gives them: stdout line-buffered
    only on a terminal, stderr always line-buffered with backslashreplace; with PYTHONUNBUFFERED (as `-u`)
    both write through at once, which decides how stdout and stderr interleave in one pipe."""
    if unbuffered:
        out = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=os.isatty(1), write_through=True)
        err = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True,
                               write_through=True)  # fmt: skip
    else:
        out = open(1, "w", closefd=False)  # noqa: SIM115 - the child's stdio for its lifetime
        err = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    return open(0, closefd=False), out, err


def _read_request(conn: socket.socket) -> tuple[list[int], str, str, str, list[str], dict[str, str]] | None:
    """The launch's descriptors and fields; None or an error when it is not a whole request, and then the
    descriptors are closed here: a kept write end of a shell's stdout pipe would hang that adb shell."""
    data, fds, _, _ = socket.recv_fds(conn, MAX_REQUEST, 3)
    if len(fds) != 3 or len(data) < 4:
        for fd in fds:
            os.close(fd)
        return None
    try:
        return (fds, *_parse(conn, data))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _parse(conn: socket.socket, data: bytes) -> tuple[str, str, str, list[str], dict[str, str]]:
    (length,) = struct.unpack("I", data[:4])
    if length > MAX_REQUEST:
        raise ValueError("request too long")
    body = bytearray(data[4:])
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            raise ValueError("request cut off")
        body += chunk
    fields = [os.fsdecode(f) for f in bytes(body).split(b"\0")[:-1]]
    if len(fields) < 2 or not fields[1].isdigit() or int(fields[1]) < 2 or len(fields) < 2 + int(fields[1]):
        raise ValueError("malformed request")
    cwd, count = fields[0], int(fields[1])
    python, script, *argv = fields[2 : 2 + count]
    env = dict(entry.partition("=")[::2] for entry in fields[2 + count :])
    return cwd, python, script, argv, env


def _send(conn: socket.socket, data: bytes) -> None:
    conn.sendall(data)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Launcher:
    """The emulator's handle on its server: started once, on demand; `environment()` is what the sandbox's
    shells get so the launcher finds it; `stop()` ends it (it also ends on its own when the emulator does)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None

    def start(self) -> None:
        """Start the server, or start it again if it died: a dead server's socket would send every launch
        down the slow path, silently."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        # A short path: AF_UNIX paths are limited to 107 bytes, and the sandbox may be deep in a test's tmp.
        self.folder = Path(tempfile.mkdtemp(prefix="dnas-pt-"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "device_agents.emulator.perf_test_server", str(self.folder / SOCKET_NAME)],
            stdin=subprocess.PIPE,  # the lifeline: EOF when this process ends
            stdout=subprocess.PIPE,  # one line once it listens (wait_ready); the emulator never waits
            env=os.environ | SINGLE_THREADED,
        )

    def environment(self) -> dict[str, str]:
        """The socket path once the server runs. A launcher that finds no socket yet (the server is still
        importing) falls back to exec'ing Python. A server that died is started again here, on the next shell."""
        if self.proc is not None and self.proc.poll() is not None:
            self.start()
        return {ENV: str(self.folder / SOCKET_NAME)} if self.folder is not None else {}

    def wait_ready(self) -> None:
        """Block until the server listens (it prints one line then): for tests that must see it used."""
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the perf_test server exited with {self.proc.wait()} before listening")

    def stop(self) -> None:
        """End the server and remove its folder (the server removes it too, unless it died first)."""
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def serve(path: Path) -> None:
    """Import what every perf_test run needs, then listen at `path` until stdin reaches EOF."""
    import numpy  # noqa: F401 - pre-imported for every child
    import onnxruntime  # noqa: F401

    from device_agents.emulator import perf_test_standin  # noqa: F401

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(64)
        print("listening", flush=True)
        Server(listener, sys.stdin.fileno()).run()
    finally:
        listener.close()
        shutil.rmtree(path.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Fork server for the perf-test stand-in (see module doc).")
    parser.add_argument("socket", type=Path, help="Where to listen; its folder is removed on exit.")
    serve(parser.parse_args().socket)


if __name__ == "__main__":
    main()
