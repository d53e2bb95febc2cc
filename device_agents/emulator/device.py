"""The device: accepts TCP connections, runs the CNXN / AUTH handshake, multiplexes streams.

Flow control follows adbd: every WRTE is answered with OKAY, and a stream sends its next WRTE only after
the host's OKAY for the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from device_agents.emulator import services
from device_agents.emulator.auth import KeyStore
from device_agents.emulator.perf_test_server import Launcher
from device_agents.emulator.sandbox import Sandbox
from device_agents.emulator.usb import FramedReader, frame
from device_agents.emulator.wire import (
    AUTH,
    AUTH_RSAPUBLICKEY,
    AUTH_SIGNATURE,
    AUTH_TOKEN,
    CLSE,
    CNXN,
    HEADER,
    MAX_PAYLOAD,
    OKAY,
    OPEN,
    VERSION_SKIP_CHECKSUM,
    WRTE,
    Message,
    ProtocolViolation,
    encode,
    read_message,
)

log = logging.getLogger("dnas.emulator")
OKAY_TIMEOUT_S = 60.0


class StreamClosed(Exception):
    pass


class Stream:
    def __init__(self, connection: Connection, local_id: int, remote_id: int) -> None:
        self.connection, self.local_id, self.remote_id = connection, local_id, remote_id
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.buffer = bytearray()
        self.acked = asyncio.Event()
        self.acked.set()
        self.closed = False
        self.task: asyncio.Task | None = None

    async def write(self, data: bytes) -> None:
        step = self.connection.max_payload
        for start in range(0, len(data), step):
            if self.closed:
                raise StreamClosed()
            await asyncio.wait_for(self.acked.wait(), OKAY_TIMEOUT_S)
            self.acked.clear()
            await self.connection.send(Message(WRTE, self.local_id, self.remote_id, data[start : start + step]))

    async def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = await self.inbox.get()
            if chunk is None:
                raise StreamClosed()
            self.buffer += chunk
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.connection.send(Message(CLSE, self.local_id, self.remote_id))
        self.connection.streams.pop(self.local_id, None)


class Connection:
    """One host link. Over TCP messages are a byte stream; over (emulated) USB every header and payload is
    its own bulk transfer (device_agents/emulator/usb.py)."""

    def __init__(self, device: EmulatedDevice, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 *, usb: bool = False) -> None:  # fmt: skip
        self.device, self.writer, self.usb = device, writer, usb
        self.reader: asyncio.StreamReader | FramedReader = FramedReader(reader) if usb else reader
        self.online = False
        self.version = VERSION_SKIP_CHECKSUM
        self.max_payload = MAX_PAYLOAD
        self.token = b""
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self._send_lock = asyncio.Lock()

    async def send(self, msg: Message) -> None:
        async with self._send_lock:
            raw = encode(msg)
            self.writer.write(frame(raw[: HEADER.size], raw[HEADER.size :]) if self.usb else raw)
            await self.writer.drain()

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername")
        try:
            while True:
                msg = await read_message(
                    self.reader, verify_checksum=self.version < VERSION_SKIP_CHECKSUM, max_payload=self.max_payload
                )
                await self.dispatch(msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except ProtocolViolation as exc:
            log.warning("closing %s: %s", peer, exc)
        finally:
            for stream in list(self.streams.values()):
                stream.closed = True
                stream.inbox.put_nowait(None)
                if stream.task:
                    stream.task.cancel()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def dispatch(self, msg: Message) -> None:
        if msg.command == CNXN:
            await self.on_connect(msg)
        elif msg.command == AUTH:
            await self.on_auth(msg)
        elif not self.online:
            raise ProtocolViolation(f"{msg.name} before the connection was authorised")
        elif msg.command == OPEN:
            await self.on_open(msg)
        elif msg.command == WRTE:
            stream = self.streams.get(msg.arg1)
            if stream is None:
                await self.send(Message(CLSE, 0, msg.arg0))
                return
            stream.inbox.put_nowait(msg.data)
            await self.send(Message(OKAY, stream.local_id, stream.remote_id))
        elif msg.command == OKAY:
            stream = self.streams.get(msg.arg1)
            if stream is not None:
                stream.remote_id = msg.arg0
                stream.acked.set()
        elif msg.command == CLSE:
            stream = self.streams.pop(msg.arg1, None)
            if stream is not None:
                stream.inbox.put_nowait(None)
                if not stream.closed:
                    stream.closed = True
                    await self.send(Message(CLSE, stream.local_id, stream.remote_id))
                if stream.task:
                    stream.task.cancel()

    # ---- handshake ----------------------------------------------------------------------------------------
    async def on_connect(self, msg: Message) -> None:
        self.version = min(msg.arg0, VERSION_SKIP_CHECKSUM)
        self.max_payload = min(msg.arg1, MAX_PAYLOAD) or MAX_PAYLOAD
        self.online = False
        if self.device.keys is None:
            await self.go_online()
        else:
            await self.send_token()

    async def send_token(self) -> None:
        self.token = os.urandom(20)
        await self.send(Message(AUTH, AUTH_TOKEN, 0, self.token))

    async def on_auth(self, msg: Message) -> None:
        keys = self.device.keys
        if keys is None or not self.token:
            raise ProtocolViolation("unexpected AUTH")
        if msg.arg0 == AUTH_SIGNATURE:
            if keys.verify(self.token, msg.data):
                await self.go_online()
            else:
                await self.send_token()  # adb then tries its next key, or offers its public key
        elif msg.arg0 == AUTH_RSAPUBLICKEY:
            if not self.device.accept_new_keys:
                log.warning("refusing an unknown host key (start with --accept-new-keys to allow it)")
                return  # like a phone whose user never taps "Allow": the host stays unauthorised
            try:
                keys.authorise(msg.data)
            except ValueError as exc:
                raise ProtocolViolation(f"bad public key: {exc}") from None
            await self.go_online()
        else:
            raise ProtocolViolation(f"unknown AUTH type {msg.arg0}")

    async def go_online(self) -> None:
        self.online = True
        props = self.device.sandbox.props
        banner = "device::" + "".join(
            f"{k}={props[k]};" for k in ("ro.product.name", "ro.product.model", "ro.product.device")
        )
        await self.send(Message(CNXN, self.version, self.max_payload, banner.encode() + b"\0"))

    # ---- streams ------------------------------------------------------------------------------------------
    async def on_open(self, msg: Message) -> None:
        service = msg.data.rstrip(b"\0").decode("utf-8", "replace")
        if service.startswith(("shell:", "exec:")):
            run = lambda s: services.shell(s, service.split(":", 1)[1])  # noqa: E731
        elif service == "sync:":
            run = services.sync
        else:
            await self.send(Message(CLSE, 0, msg.arg0))  # refused: the host reports the service as unknown
            return
        stream = Stream(self, self.next_id, msg.arg0)
        self.next_id += 1
        self.streams[stream.local_id] = stream
        await self.send(Message(OKAY, stream.local_id, stream.remote_id))
        stream.task = asyncio.create_task(self._serve(stream, run))

    async def _serve(self, stream: Stream, run) -> None:  # type: ignore[no-untyped-def]
        try:
            await run(stream)
        except (StreamClosed, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("service failed")
        finally:
            with contextlib.suppress(Exception):
                await stream.close()


class EmulatedDevice:
    def __init__(self, sandbox: Path, *, props: dict[str, str] | None = None, require_auth: bool = True,
                 accept_new_keys: bool = True, stock: bool = False,
                 cpu_max_khz: list[int] | None = None) -> None:  # fmt: skip
        self.sandbox = Sandbox(sandbox, props, stock=stock, cpu_max_khz=cpu_max_khz)
        self.keys = KeyStore(self.sandbox.root / "data/misc/adb/adb_keys") if require_auth else None
        self.accept_new_keys = accept_new_keys
        self.perf_test_server = Launcher()  # started when onnxruntime_perf_test is pushed

    def close(self) -> None:
        self.perf_test_server.stop()

    async def serve(self, host: str, port: int) -> asyncio.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await Connection(self, reader, writer).run()

        return await asyncio.start_server(handle, host, port)

    async def serve_usb(self, bus: Path) -> asyncio.Server:
        """Attach to an emulated USB bus: a socket named by the device's serial (ro.serialno)."""
        bus.mkdir(parents=True, exist_ok=True)
        path = bus / self.sandbox.props["ro.serialno"]
        path.unlink(missing_ok=True)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await Connection(self, reader, writer, usb=True).run()

        return await asyncio.start_unix_server(handle, str(path))
