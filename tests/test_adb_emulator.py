"""The emulator speaks real ADB: the adb-shell client and Debian's adb both drive it."""

import os
import shutil
import socket
import subprocess

import pytest
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.auth.keygen import keygen
from adb_shell.auth.sign_pythonrsa import PythonRSASigner
from adb_shell.exceptions import TcpTimeoutException

from device_agents.android.connection import AdbAuthError, AdbConnection
from tests.emulator_harness import running_emulator


def _signer(path):
    if not path.exists():
        keygen(str(path))
    return PythonRSASigner(path.with_suffix(".pub").read_text(), path.read_text())


def test_adb_shell_client_auth_shell_push_pull(tmp_path):
    key = tmp_path / "adbkey"
    with running_emulator(tmp_path / "sandbox") as emu:
        conn = AdbConnection(tcp=emu.address, key_path=key)
        assert conn.getprop("ro.product.model") == "dnas-emulator"
        assert conn.shell("exit 3").returncode == 3
        assert conn.shell("echo out; echo err >&2").output.split() == ["out", "err"]

        blob = os.urandom(700_000)  # several sync DATA chunks and several WRTE packets
        (tmp_path / "in.bin").write_bytes(blob)
        conn.push(tmp_path / "in.bin", "/data/local/tmp/deep/dir/in.bin")
        assert (emu.sandbox / "data/local/tmp/deep/dir/in.bin").read_bytes() == blob
        device = conn._open()
        device.pull("/data/local/tmp/deep/dir/in.bin", str(tmp_path / "out.bin"))
        assert (tmp_path / "out.bin").read_bytes() == blob
        assert device.stat("/data/local/tmp/missing")[1:] == (0, 0)
        assert [f.filename.decode() for f in device.list("/data/local/tmp/deep/dir")] == ["in.bin"]
        conn.close()

        # The key was authorised on first contact ("Allow"), and is remembered: a fresh connection signs in.
        assert (emu.sandbox / "data/misc/adb/adb_keys").read_text().count("\n") == 1
        again = AdbDeviceTcp(emu.host, emu.port, default_transport_timeout_s=5)
        assert again.connect(rsa_keys=[_signer(key)], auth_timeout_s=5)
        again.close()


def test_the_agents_tcp_link_sends_each_adb_message_at_once(tmp_path):
    """Nagle off, as adb's own client has it: adb-shell writes a message's header and payload in two sends,
    and with Nagle on every payload waited for the device's delayed ACK (~40 ms on Linux): each shell took
    ~50 ms and each model push ~130 ms, on a phone over Wi-Fi as against the emulator."""
    with running_emulator(tmp_path / "sandbox") as emu:
        conn = AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey")
        assert conn.shell("echo ok").output.strip() == "ok"
        link = conn._open()._io_manager._transport._connection
        assert link.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()


def test_paths_cannot_escape_the_sandbox(tmp_path):
    with running_emulator(tmp_path / "sandbox") as emu:
        conn = AdbConnection(tcp=emu.address, key_path=tmp_path / "adbkey")
        (tmp_path / "x").write_text("x")
        conn.push(tmp_path / "x", "/data/local/tmp/../../../../../../tmp/escaped")
        assert (emu.sandbox / "tmp/escaped").read_text() == "x"
        conn.close()


def test_unknown_key_is_refused_when_the_user_does_not_allow_it(tmp_path):
    known, unknown = tmp_path / "known" / "adbkey", tmp_path / "unknown" / "adbkey"
    for key in (known, unknown):
        key.parent.mkdir()
        _signer(key)
    adb_keys = tmp_path / "sandbox" / "data/misc/adb/adb_keys"
    adb_keys.parent.mkdir(parents=True)
    adb_keys.write_text(known.with_suffix(".pub").read_text().strip() + "\n")  # allowed on an earlier day
    with running_emulator(tmp_path / "sandbox", "--refuse-new-keys") as emu:
        # A phone whose user never taps "Allow" keeps the connection open and says nothing after the key is
        # offered: adb-shell's read of the CNXN times out. (A device that crashes or hangs up instead ends
        # the stream, which adb-shell reports as AdbTimeoutError or a connection error.)
        device = AdbDeviceTcp(emu.host, emu.port, default_transport_timeout_s=2)
        with pytest.raises(TcpTimeoutException):
            device.connect(rsa_keys=[_signer(unknown)], auth_timeout_s=2)
        # The agent's connection turns that into what the user has to do.
        conn = AdbConnection(tcp=emu.address, key_path=unknown, auth_timeout_s=2)
        with pytest.raises(AdbAuthError, match=r"did not accept this computer's adb key within 2 s: .*tap Allow"):
            conn.getprop("ro.product.model")
        # Refused, not broken: the device still runs, remembered nothing, and lets the known key in.
        assert emu.proc.poll() is None
        assert adb_keys.read_text().count("\n") == 1
        ok = AdbConnection(tcp=emu.address, key_path=known, auth_timeout_s=2)
        assert ok.getprop("ro.product.model") == "dnas-emulator"
        ok.close()


ADB = shutil.which("adb")


@pytest.mark.skipif(ADB is None and not os.environ.get("CI"), reason="Debian's adb client not installed")
def test_debian_adb_client_connects_shells_pushes_pulls(tmp_path):
    assert ADB, "CI installs Debian's adb (apt package adb)"
    home = tmp_path / "home"
    home.mkdir()
    from tests.service_harness import free_port

    env = os.environ | {"HOME": str(home), "ANDROID_ADB_SERVER_PORT": str(free_port())}

    def adb(*args: str) -> str:
        return subprocess.run([ADB, *args], env=env, capture_output=True, text=True, timeout=60, check=True).stdout

    with running_emulator(tmp_path / "sandbox") as emu:
        try:
            adb("connect", emu.address)  # first contact: adb offers its key, the device "allows" it
            assert f"{emu.address}\tdevice" in adb("devices")
            assert adb("-s", emu.address, "shell", "getprop ro.product.model; echo $((6*7))").split() == [
                "dnas-emulator",
                "42",
            ]
            blob = os.urandom(300_000)
            (tmp_path / "p.bin").write_bytes(blob)
            adb("-s", emu.address, "push", str(tmp_path / "p.bin"), "/data/local/tmp/p.bin")
            assert (emu.sandbox / "data/local/tmp/p.bin").read_bytes() == blob
            adb("-s", emu.address, "pull", "/data/local/tmp/p.bin", str(tmp_path / "q.bin"))
            assert (tmp_path / "q.bin").read_bytes() == blob
            assert "p.bin" in adb("-s", emu.address, "shell", "ls /data/local/tmp")
        finally:
            subprocess.run([ADB, "kill-server"], env=env, capture_output=True, timeout=30)
