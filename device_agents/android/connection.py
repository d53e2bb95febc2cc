"""One adb connection to one device, over TCP or USB, with the RSA key kept between runs.

adb-shell's traps are handled here:
- its `transport_timeout_s` bounds each single bulk read, and 0.4.4's TCP and USB `bulk_read` raise on it
  without retrying (`TcpTimeoutException`, `UsbReadFailedError`): `read_timeout_s` is only checked between
  reads that returned. So a command's transport timeout is its whole timeout: a command that prints nothing
  for longer than the 10 s connect timeout (a protocol-1 run, a runner that prints only at the end) is not a
  dead link. A closed TCP link is still an error at once (`_TcpTransport`).
- the plain `shell:` service returns no exit status, so every command ends with `; echo __RC=$?`, which is
  parsed and stripped.

Errors of the link itself (connect, a closed or silent transport, a cut-off reply) are `AdbLinkError`, so a
caller can tell a phone that went away from a command that failed on it.

USB goes through adb-shell's own `UsbTransport` (the `adb-shell[usb]` extra: libusb1), handed to `AdbDevice`
as a transport object. That seam is also how the tests drive this code path without a phone: the ADB device
emulator serves the same byte stream, transfer by transfer, over a local socket
(`device_agents.emulator.usb`); only libusb itself is not exercised.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adb_shell.adb_device import AdbDevice
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.exceptions import TcpTimeoutException, UsbReadFailedError
from adb_shell.transport.base_transport import BaseTransport
from adb_shell.transport.tcp_transport import TcpTransport
from platformdirs import user_config_dir

log = logging.getLogger("dnas.android")
_RC = re.compile(r"\n?__RC=(\d+)\s*$")


class AdbError(Exception):
    """The device or the link failed; the message says which command and why."""


class AdbLinkError(AdbError):
    """The link to the device failed (refused, closed, silent past the command's timeout, cut off): the phone
    went away or is rebooting, which says nothing about the command or the model it was running."""


class AdbAuthError(AdbError):
    """The device did not authorise this computer's key: nobody tapped "Allow" on it (in time)."""


UsbTransportFactory = Callable[[str, float], BaseTransport]


def libusb_transport(serial: str, timeout_s: float) -> BaseTransport:
    """adb-shell's USB transport for the device with this serial (needs libusb-1.0 on the host)."""
    from adb_shell.transport.usb_transport import UsbTransport  # imports libusb1: only when USB is used

    return UsbTransport.find_adb(serial, None, timeout_s)


@dataclass
class ShellResult:
    output: str
    returncode: int


class _TcpTransport(TcpTransport):
    """adb-shell's TCP transport returns b"" forever once the device closes the socket, and its reader spins
    on that until `read_timeout_s` (minutes, for a batch). A closed link is an error at once: a phone that
    drops off the network fails its batch now, not ten minutes later."""

    def connect(self, transport_timeout_s: float | None) -> None:
        """Nagle off, as adb's own client has it: adb-shell writes a message's header and payload in two
        sends, and with Nagle on the payload waited for the device's delayed ACK of the header (40 ms on
        Linux) on every message: a push of 45 small models took 6 s instead of 0.1 s, each shell ~50 ms."""
        super().connect(transport_timeout_s)
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        data = super().bulk_read(numbytes, transport_timeout_s)
        if not data:
            raise ConnectionResetError(f"{self._host}:{self._port} closed the connection")
        return bytes(data)


def default_key_path() -> Path:
    return Path(user_config_dir("dnas")) / "adbkey"


def load_signer(key_path: Path) -> PythonRSASigner:
    """Generate the key pair on first use; the phone then remembers it after one "Allow"."""
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        keygen(str(key_path))
        key_path.chmod(0o600)
        log.info("generated adb key %s (accept it on the device once)", key_path)
    return PythonRSASigner(Path(f"{key_path}.pub").read_text(), key_path.read_text())


class AdbConnection:
    def __init__(
        self,
        *,
        tcp: str | None = None,
        serial: str | None = None,
        key_path: Path | None = None,
        transport_timeout_s: float = 10.0,
        auth_timeout_s: float = 30.0,
        usb_transport: UsbTransportFactory = libusb_transport,
    ) -> None:
        if bool(tcp) == bool(serial):
            raise ValueError("give exactly one of tcp='HOST:PORT' or serial='SERIAL'")
        self.tcp, self.serial = tcp, serial
        self.usb_transport = usb_transport
        self.key_path = key_path or default_key_path()
        self.transport_timeout_s = transport_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self._device: AdbDevice | None = None

    @property
    def name(self) -> str:
        return self.tcp or f"usb:{self.serial}"

    def _open(self) -> AdbDevice:
        if self._device is not None and self._device.available:
            return self._device
        if self.tcp:
            host, _, port = self.tcp.rpartition(":")
            device = AdbDevice(_TcpTransport(host or self.tcp, int(port or 5555)),
                               default_transport_timeout_s=self.transport_timeout_s)  # fmt: skip
        else:
            assert self.serial is not None
            try:
                transport = self.usb_transport(self.serial, self.transport_timeout_s)
            except Exception as exc:
                raise AdbLinkError(
                    f"no USB device with serial {self.serial} ({type(exc).__name__}: {exc}). Check that USB debugging "
                    "is on, the cable carries data, the phone shows this computer as allowed, and no adb server "
                    "holds the device (`adb kill-server`)"
                ) from exc
            device = AdbDevice(transport, default_transport_timeout_s=self.transport_timeout_s)
        offered = False

        def on_offer(_device: AdbDevice) -> None:
            # adb-shell calls this when the device knows none of our keys and we send it the public one: the
            # phone now shows "Allow USB debugging?" and stays silent until someone answers.
            nonlocal offered
            offered = True
            log.warning("%s: accept this computer's adb key on the device (tap Allow)", self.name)

        try:
            device.connect(rsa_keys=[load_signer(self.key_path)], auth_timeout_s=self.auth_timeout_s,
                           auth_callback=on_offer)  # fmt: skip
        except (TcpTimeoutException, UsbReadFailedError) as exc:
            if offered:  # silence after the offer, not a closed link: the key was not accepted
                raise AdbAuthError(
                    f"{self.name} did not accept this computer's adb key within {self.auth_timeout_s:g} s: unlock "
                    f"it and tap Allow on the 'Allow USB debugging?' prompt (tick 'Always allow'), then retry; "
                    f"the key is {self.key_path}.pub"
                ) from exc
            raise AdbLinkError(f"cannot connect to {self.name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise AdbLinkError(f"cannot connect to {self.name}: {type(exc).__name__}: {exc}") from exc
        self._device = device
        return device

    def close(self) -> None:
        if self._device is not None:
            try:
                self._device.close()
            finally:
                self._device = None

    def shell(self, command: str, timeout_s: float = 60.0) -> ShellResult:
        """Run a command and return its output and exit status (parsed from the appended marker)."""
        device = self._open()
        read_timeout = max(timeout_s, self.transport_timeout_s)
        try:
            raw = device.shell(
                f"({command}); echo __RC=$?",  # a subshell, so even `exit` reports its status
                transport_timeout_s=read_timeout,  # one bulk read may wait as long as the command may run
                read_timeout_s=read_timeout,
                timeout_s=read_timeout + 5,
                decode=True,
            )
        except Exception as exc:
            self.close()
            raise AdbLinkError(f"{self.name}: shell {command[:80]!r} failed: {type(exc).__name__}: {exc}") from exc
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        m = _RC.search(text)
        if not m:
            self.close()
            raise AdbLinkError(f"{self.name}: no exit status from {command[:80]!r} (cut off?): {text[-200:]!r}")
        return ShellResult(text[: m.start()], int(m.group(1)))

    def check(self, command: str, timeout_s: float = 60.0) -> str:
        result = self.shell(command, timeout_s)
        if result.returncode != 0:
            raise AdbError(f"{self.name}: {command[:80]!r} exited {result.returncode}: {result.output[-500:]}")
        return result.output

    def push(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        device = self._open()
        try:
            device.push(
                str(local),
                remote,
                transport_timeout_s=max(timeout_s, self.transport_timeout_s),
                read_timeout_s=timeout_s,
            )  # fmt: skip (a slow flash may take a while to answer DONE)
        except Exception as exc:
            self.close()
            raise AdbLinkError(
                f"{self.name}: push {local.name} -> {remote} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def stream(self, command: str, on_line: Callable[[str], None], idle_timeout_s: float = 600.0) -> int:
        """Run a command, handing each output line to `on_line` as it arrives; returns the exit status.

        For long runs that print progress (a batch in rounds): the run may last hours as long as some output
        arrives every `idle_timeout_s`. If `on_line` raises, the connection is closed (which ends the command on
        the device, as adbd does when its stream closes) and the exception propagates."""
        device = self._open()
        pending = ""
        returncode: int | None = None
        try:
            chunks = device.streaming_shell(
                f"({command}); echo __RC=$?",
                transport_timeout_s=idle_timeout_s,  # a quiet stretch is not a dead link
                read_timeout_s=idle_timeout_s,
                decode=True,
            )
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    if m := re.fullmatch(r"__RC=(\d+)\s*", line):
                        returncode = int(m.group(1))
                    else:
                        on_line(line)
        except Exception as exc:
            self.close()
            if isinstance(exc, (AdbError, KeyboardInterrupt)) or not _is_link_error(exc):
                raise
            raise AdbLinkError(f"{self.name}: shell {command[:80]!r} failed: {type(exc).__name__}: {exc}") from exc
        if pending.strip():
            if m := re.fullmatch(r"__RC=(\d+)\s*", pending.strip()):
                returncode = int(m.group(1))
            else:
                on_line(pending)
        if returncode is None:
            self.close()
            raise AdbLinkError(f"{self.name}: no exit status from {command[:80]!r} (cut off?)")
        return returncode

    def sha256sums(self, folder: str, names: list[str]) -> dict[str, str]:
        """SHA-256 of the named files in a device folder (toybox's sha256sum, Android 7+); missing files are left
        out. Names are relative so the answer does not depend on how the device spells its paths."""
        if not names:
            return {}
        quoted = " ".join(shlex.quote(n) for n in names)
        out = self.shell(f"cd {shlex.quote(folder)} 2>/dev/null && sha256sum {quoted} 2>/dev/null").output
        sums = {}
        for line in out.splitlines():
            digest, _, name = line.strip().partition(" ")
            name = name.strip().lstrip("*")
            if re.fullmatch(r"[0-9a-f]{64}", digest) and name in names:
                sums[name] = digest
        return sums

    def push_if_changed(self, local: Path, remote_dir: str, name: str | None = None) -> bool:
        """Push unless the device already holds the same bytes (by SHA-256): a rebuilt file always replaces
        the old one, an unchanged one is never sent twice. Returns whether it pushed."""
        name = name or local.name
        if self.sha256sums(remote_dir, [name]).get(name) == sha256_file(local):
            return False
        self.push(local, f"{remote_dir.rstrip('/')}/{name}")
        return True

    def exists(self, remote: str) -> bool:
        return self.shell(f"test -e {remote}").returncode == 0

    def getprop(self, name: str) -> str:
        return self.check(f"getprop {name}").strip()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_link_error(exc: Exception) -> bool:
    """Errors of adb-shell or the socket underneath, as opposed to errors raised by a line handler."""
    return isinstance(exc, OSError) or type(exc).__module__.startswith("adb_shell")
