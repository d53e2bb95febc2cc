"""ADB transport messages: a 24-byte little-endian header (command, arg0, arg1, length, checksum, magic)
followed by the payload."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass


def _cmd(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


CNXN, AUTH, OPEN, OKAY, CLSE, WRTE, SYNC = (
    _cmd(c) for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"SYNC")
)
NAMES = {v: k for k, v in {"CNXN": CNXN, "AUTH": AUTH, "OPEN": OPEN, "OKAY": OKAY, "CLSE": CLSE, "WRTE": WRTE}.items()}

VERSION_MIN = 0x01000000  # checksums required
VERSION_SKIP_CHECKSUM = 0x01000001
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
HEADER = struct.Struct("<6I")
MAX_PAYLOAD = 256 * 1024


class ProtocolViolation(Exception):
    """A malformed message: the connection is closed, as adbd does."""


@dataclass
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return NAMES.get(self.command, hex(self.command))


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


def encode(msg: Message) -> bytes:
    header = HEADER.pack(msg.command, msg.arg0, msg.arg1, len(msg.data), checksum(msg.data), msg.command ^ 0xFFFFFFFF)
    return header + msg.data


async def read_message(reader: asyncio.StreamReader, *, verify_checksum: bool, max_payload: int) -> Message:
    raw = await reader.readexactly(HEADER.size)
    command, arg0, arg1, length, check, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolViolation(f"bad magic for command {command:#x}")
    if length > max(max_payload, MAX_PAYLOAD, 1024 * 1024):
        raise ProtocolViolation(f"payload of {length} bytes exceeds the maximum")
    data = await reader.readexactly(length) if length else b""
    if verify_checksum and length and checksum(data) != check:
        raise ProtocolViolation("payload checksum mismatch")
    return Message(command, arg0, arg1, data)
