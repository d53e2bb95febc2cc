"""ADB over "USB" without a phone: the emulator serves the byte stream a USB link carries, transfer by
transfer, on a local socket, and `EmulatedUsbTransport` is the host side, a drop-in for adb-shell's
`UsbTransport` (a `BaseTransport` handed to `AdbDevice`).

On USB, adbd sends each message's 24-byte header and its payload as separate bulk transfers, and a bulk read
returns at most one transfer. Here each transfer travels as a 4-byte little-endian length and its bytes, so
those boundaries survive the socket. A "bus" is a folder with one socket per device, named by its serial:
`find_adb(serial)` fails like adb-shell's does when no device has that serial. Only libusb itself is not
exercised by this path.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from adb_shell.exceptions import UsbDeviceNotFoundError, UsbReadFailedError, UsbWriteFailedError
from adb_shell.transport.base_transport import BaseTransport

_LEN = struct.Struct("<I")


class EmulatedUsbTransport(BaseTransport):
    def __init__(self, path: Path, default_transport_timeout_s: float | None = None) -> None:
        self.path = path
        self.default_timeout_s = default_transport_timeout_s
        self._sock: socket.socket | None = None
        self._transfer = b""  # what is left of the current bulk transfer

    @classmethod
    def find_adb(cls, bus: Path, serial: str, default_transport_timeout_s: float | None = None) -> EmulatedUsbTransport:
        path = bus / serial
        if not path.exists():
            raise UsbDeviceNotFoundError(f"No device available, or it is in the wrong configuration: {serial}")
        return cls(path, default_transport_timeout_s)

    def connect(self, transport_timeout_s: float | None) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(transport_timeout_s or self.default_timeout_s)
        self._sock.connect(str(self.path))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _recv_exact(self, n: int) -> bytes:
        assert self._sock is not None
        data = bytearray()
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise UsbReadFailedError("device disconnected", None)
            data += chunk
        return bytes(data)

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        if self._sock is None:
            raise UsbReadFailedError("not connected", None)
        self._sock.settimeout(transport_timeout_s or self.default_timeout_s)
        try:
            if not self._transfer:
                (size,) = _LEN.unpack(self._recv_exact(4))
                self._transfer = self._recv_exact(size)
        except TimeoutError as exc:
            raise UsbReadFailedError("Could not receive data (timeout)", exc) from exc
        out, self._transfer = self._transfer[:numbytes], self._transfer[numbytes:]
        return out

    def bulk_write(self, data: bytes, transport_timeout_s: float | None) -> int:
        if self._sock is None:
            raise UsbWriteFailedError("not connected", None)
        self._sock.settimeout(transport_timeout_s or self.default_timeout_s)
        try:
            self._sock.sendall(_LEN.pack(len(data)) + bytes(data))
        except OSError as exc:
            raise UsbWriteFailedError("Could not send data", exc) from exc
        return len(data)


class FramedReader:
    """Device side: host transfers arrive framed; the ADB reader wants a byte stream."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = bytearray()

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            (size,) = _LEN.unpack(await self.reader.readexactly(4))
            self.buffer += await self.reader.readexactly(size)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


def frame(*transfers: bytes) -> bytes:
    """Device side: each bulk transfer as length + bytes (a header and its payload are two transfers)."""
    return b"".join(_LEN.pack(len(t)) + t for t in transfers if t)
