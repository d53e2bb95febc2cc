"""One adb connection to one device, over TCP or USB, with the RSA key kept between runs.

adb-shell's traps are handled here: `shell()` gives up when no packet arrives within `read_timeout_s`, so all
three timeouts are passed (transport <= read <= total); the plain `shell:` service returns no exit status,
so every command ends with `; echo __RC=$?`, which is parsed and stripped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from adb_shell.adb_device import AdbDevice
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.exceptions import TcpTimeoutException, UsbReadFailedError
from adb_shell.transport.tcp_transport import TcpTransport
from platformdirs import user_config_dir

log = logging.getLogger("dnas.android")
_RC = re.compile(r"\n?__RC=(\d+)\s*$")


class AdbError(Exception):
    """The device or the link failed; the message says which command and why."""


class AdbAuthError(AdbError):
    """The device did not authorise this computer's key: nobody tapped "Allow" on it (in time)."""


@dataclass
class ShellResult:
    output: str
    returncode: int


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


class _TcpTransport(TcpTransport):
    """adb-shell's TCP transport, except that a closed connection is an error.

    adb-shell takes the empty read at end of stream for "no data yet" and reads again at once until its read
    timeout, which for a measurement is the run timeout: a device that vanishes mid-command (adbd killed, USB
    pulled under adb over TCP, emulator gone) kept a host core busy for up to ten minutes before the job
    failed. Here the first empty read raises, and the job fails with the reason at once.
    """

    def bulk_read(self, numbytes: int, transport_timeout_s: float | None) -> bytes:
        data = super().bulk_read(numbytes, transport_timeout_s)
        if not data:
            raise ConnectionResetError(f"{self._host}:{self._port} closed the adb connection")
        return data


class AdbConnection:
    def __init__(
        self,
        *,
        tcp: str | None = None,
        serial: str | None = None,
        key_path: Path | None = None,
        transport_timeout_s: float = 10.0,
        auth_timeout_s: float = 30.0,
    ) -> None:
        if bool(tcp) == bool(serial):
            raise ValueError("give exactly one of tcp='HOST:PORT' or serial='SERIAL'")
        self.tcp, self.serial = tcp, serial
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
            transport = _TcpTransport(host or self.tcp, int(port or 5555))
            device: AdbDevice = AdbDevice(transport, default_transport_timeout_s=self.transport_timeout_s)
        else:
            from adb_shell.adb_device_usb import AdbDeviceUsb  # needs libusb; only imported for USB

            device = AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.transport_timeout_s)
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
            raise AdbError(f"cannot connect to {self.name}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise AdbError(f"cannot connect to {self.name}: {type(exc).__name__}: {exc}") from exc
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
                transport_timeout_s=self.transport_timeout_s,
                read_timeout_s=read_timeout,
                timeout_s=read_timeout + 5,
                decode=True,
            )
        except Exception as exc:
            self.close()
            raise AdbError(f"{self.name}: shell {command[:80]!r} failed: {type(exc).__name__}: {exc}") from exc
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        m = _RC.search(text)
        if not m:
            raise AdbError(f"{self.name}: no exit status from {command[:80]!r} (cut off?): {text[-200:]!r}")
        return ShellResult(text[: m.start()], int(m.group(1)))

    def check(self, command: str, timeout_s: float = 60.0) -> str:
        result = self.shell(command, timeout_s)
        if result.returncode != 0:
            raise AdbError(f"{self.name}: {command[:80]!r} exited {result.returncode}: {result.output[-500:]}")
        return result.output

    def push(self, local: Path, remote: str, timeout_s: float = 120.0) -> None:
        device = self._open()
        try:
            device.push(str(local), remote, transport_timeout_s=self.transport_timeout_s,
                        read_timeout_s=timeout_s)  # fmt: skip
        except Exception as exc:
            self.close()
            raise AdbError(f"{self.name}: push {local.name} -> {remote} failed: {type(exc).__name__}: {exc}") from exc

    def exists(self, remote: str) -> bool:
        return self.shell(f"test -e {remote}").returncode == 0

    def getprop(self, name: str) -> str:
        return self.check(f"getprop {name}").strip()
