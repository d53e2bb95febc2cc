"""A TCP proxy a test can turn into a black hole: what a NAT, a proxy or a pooler that hangs does to a connection.

Unlike a cut (tests/net_proxy.py), a black hole closes nothing and refuses nothing: the open connections stay
established, their bytes are still taken off the wire (the kernel acknowledges them) and never delivered, so
neither end sees an error or an EOF. New connections are still forwarded, unless `answer_new` is turned off;
then they are accepted and held, and never reach the server. It runs on the test's own event loop, and calls
`on_change` whenever something a test waits on moved (a connection accepted, bytes swallowed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Pipe:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    stalled: bool = False


class BlackHoleProxy:
    def __init__(self, target: tuple[str, int], on_change: Callable[[], None] = lambda: None) -> None:
        self.target = target
        self.on_change = on_change
        self.answer_new = True
        self.accepted = 0  # connections accepted, forwarded or not
        self.swallowed = 0  # reads taken off a black-holed connection and dropped
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: list[_Pipe] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def black_hole(self) -> None:
        """From now on, forward nothing on any connection open now; keep them open. Later ones are not affected."""
        for pipe in self._pipes:
            pipe.stalled = True

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for pipe in self._pipes:
            for writer in pipe.writers:
                writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pipe = _Pipe([writer], stalled=not self.answer_new)
        self._pipes.append(pipe)
        self.accepted += 1
        self.on_change()
        if pipe.stalled:  # held: accepted, never forwarded
            await self._closing.wait()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        pipe.writers.append(up_writer)
        pumps = [
            asyncio.create_task(self._pump(src, dst, pipe)) for src, dst in ((reader, up_writer), (up_reader, writer))
        ]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)  # the handler lasts as long as its connection

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, pipe: _Pipe) -> None:
        while data := await src.read(65536):
            if pipe.stalled:
                self.swallowed += 1
                self.on_change()
                await self._closing.wait()  # read no more: the sender's bytes pile up unanswered
                return
            dst.write(data)
            await dst.drain()
        if not pipe.stalled:  # an end closed while forwarding: pass it on
            with contextlib.suppress(OSError):
                dst.close()
