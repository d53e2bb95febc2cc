"""A wait for a run outlives a service that drops connections for a moment (a worker replaced, a restart), and
still ends at once on a real refusal. Over real HTTP: a server on loopback that resets connections first."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from search.tables import client as client_module
from search.tables.client import ServiceClient, ServiceError

FINISHED = {"id": 1, "status": "published", "total": 1, "done": 1, "failed": 0}


@contextmanager
def serving(answers: list[str]) -> Iterator[tuple[str, list[str]]]:
    """A server answering each request by the next of `answers` (the last repeats): "reset" closes the
    connection with an RST before answering, a number answers that status, "run" a finished run."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = answers[min(len(seen), len(answers) - 1)]
            seen.append(answer)
            if answer == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            status, body = (200, FINISHED) if answer == "run" else (int(answer), {"detail": "no such run"})
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_wait_rides_out_reset_connections_and_a_503() -> None:
    with serving(["reset", "reset", "503", "run"]) as (url, seen), ServiceClient(url, "t") as client:
        assert client.wait_for_run(1, poll_s=0.01)["status"] == "published"
    assert seen == ["reset", "reset", "503", "run"]


def test_a_refusal_ends_the_wait_at_once() -> None:
    with (
        serving(["404"]) as (url, seen),
        ServiceClient(url, "t") as client,
        pytest.raises(ServiceError, match="HTTP 404: no such run"),
    ):
        client.wait_for_run(1, poll_s=0.01)
    assert seen == ["404"]


def test_a_service_gone_for_longer_than_the_grace_ends_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "UNREACHABLE_GRACE_S", 0.3)
    with (
        serving(["reset"]) as (url, seen),
        ServiceClient(url, "t") as client,
        pytest.raises(ServiceError, match="cannot reach the service"),
    ):
        client.wait_for_run(1, poll_s=0.01)
    assert len(seen) > 1  # asked again within the grace, then gave up


@pytest.mark.timeout(30)  # the 120 s grace would hold it past this
def test_the_grace_never_outlasts_the_wait_s_own_timeout() -> None:
    with (
        serving(["reset"]) as (url, _),
        ServiceClient(url, "t") as client,
        pytest.raises(ServiceError, match="cannot reach the service"),
    ):
        client.wait_for_run(1, timeout_s=0.3, poll_s=0.01)
