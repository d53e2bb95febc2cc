"""The services a stream can open: `shell:` / `exec:` (run a command) and `sync:` (file transfer)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from device_agents.emulator.device import Stream

SYNC_DATA_MAX = 64 * 1024
PERF_TEST = "onnxruntime_perf_test"
MAX_PATH = 1024


async def shell(stream: Stream, command: str) -> None:
    """Legacy `shell:`: stdout and stderr interleaved, no exit status (adb clients append `; echo $?`)."""
    device = stream.connection.device
    sandbox = device.sandbox
    if not command.strip():
        await stream.write(b"interactive shells are not supported by the emulator\n")
        return
    proc = await asyncio.create_subprocess_shell(
        sandbox.translate_command(command),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=sandbox.root / "data/local/tmp",
        env=sandbox.environment() | device.perf_test_server.environment(),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(64 * 1024):
            await stream.write(chunk)
        await proc.wait()
    finally:
        if proc.returncode is None:  # the host closed the stream: end the command, as adbd does
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def sync(stream: Stream) -> None:
    """The file sync protocol: STAT, LIST, SEND, RECV, QUIT, each request an id, a length and a payload."""
    sandbox = stream.connection.device.sandbox
    while True:
        header = await stream.read_exact(8)
        ident, length = header[:4], struct.unpack("<I", header[4:])[0]
        if ident == b"QUIT":
            return
        if length > MAX_PATH:
            await _fail(stream, f"path too long ({length} bytes)")
            return
        arg = (await stream.read_exact(length)).decode("utf-8", "replace")
        if ident == b"STAT":
            await stream.write(b"STAT" + _stat(sandbox.host_path(arg)))
        elif ident == b"LIST":
            await _list(stream, sandbox.host_path(arg))
        elif ident == b"SEND":
            path, _, mode = arg.rpartition(",")  # "path,mode" with the mode in decimal
            target = sandbox.host_path(path or arg)
            if target.name == PERF_TEST:  # the perf-test stand-in is being installed: start its fork server
                stream.connection.device.perf_test_server.start()
            if not await _receive_file(stream, target, int(mode) if mode.isdigit() else 0o644):
                return
        elif ident == b"RECV":
            await _send_file(stream, sandbox.host_path(arg))
        else:
            await _fail(stream, f"unknown sync request {ident!r}")
            return


def _stat(path) -> bytes:  # type: ignore[no-untyped-def]
    try:
        st = path.stat()
    except OSError:
        return struct.pack("<III", 0, 0, 0)
    return struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))


async def _list(stream: Stream, path) -> None:  # type: ignore[no-untyped-def]
    try:
        entries = sorted(path.iterdir()) if path.is_dir() else []
    except OSError:
        entries = []
    for entry in entries:
        name = entry.name.encode()
        await stream.write(b"DENT" + _stat(entry) + struct.pack("<I", len(name)) + name)
    await stream.write(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))


async def _fail(stream: Stream, message: str) -> None:
    data = message.encode()
    await stream.write(b"FAIL" + struct.pack("<I", len(data)) + data)


async def _receive_file(stream: Stream, target, mode: int) -> bool:  # type: ignore[no-untyped-def]
    """SEND: DATA chunks then DONE(mtime). Written beside the target and renamed, so a cut-off push never
    leaves a half file where the device expects a whole one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.adbpart")
    try:
        with open(tmp, "wb") as fh:
            while True:
                header = await stream.read_exact(8)
                ident, length = header[:4], struct.unpack("<I", header[4:])[0]
                if ident == b"DATA":
                    if length > SYNC_DATA_MAX:
                        await _fail(stream, f"DATA chunk of {length} bytes exceeds {SYNC_DATA_MAX}")
                        return False
                    fh.write(await stream.read_exact(length))
                elif ident == b"DONE":
                    mtime = length
                    break
                else:
                    await _fail(stream, f"unexpected {ident!r} during SEND")
                    return False
        os.replace(tmp, target)
        os.chmod(target, stat.S_IMODE(mode) or 0o644)
        if mtime:
            os.utime(target, (mtime, mtime))
    finally:
        tmp.unlink(missing_ok=True)
    await stream.write(b"OKAY" + struct.pack("<I", 0))
    return True


async def _send_file(stream: Stream, path) -> None:  # type: ignore[no-untyped-def]
    if not path.is_file():
        await _fail(stream, "No such file or directory")
        return
    with open(path, "rb") as fh:
        while chunk := fh.read(SYNC_DATA_MAX):
            await stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
    await stream.write(b"DONE" + struct.pack("<I", 0))
