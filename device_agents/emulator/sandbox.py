"""The emulated device's file system and environment: device paths live under a host folder."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

DEFAULT_PROPS = {
    "ro.product.model": "dnas-emulator",
    "ro.product.manufacturer": "dnas",
    "ro.product.name": "dnas_emu",
    "ro.product.device": "emu",
    "ro.soc.model": "host-cpu",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.product.cpu.abi": "x86_64",
}
DEVICE_ROOTS = ("/data", "/sdcard", "/storage", "/system/bin")


class Sandbox:
    def __init__(self, root: Path, props: dict[str, str] | None = None) -> None:
        self.root = root.resolve()
        self.props = DEFAULT_PROPS | (props or {})
        self.bin = self.root / "system" / "bin"
        for sub in ("data/local/tmp", "sdcard", "system/bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._install_tools()

    def host_path(self, device_path: str) -> Path:
        """Map an absolute device path into the sandbox; `..` cannot climb out of it."""
        if not device_path.startswith("/"):
            device_path = "/data/local/tmp/" + device_path
        parts = [p for p in Path(device_path).parts[1:] if p not in ("", ".")]
        resolved: list[str] = []
        for part in parts:
            if part == "..":
                if resolved:
                    resolved.pop()
            else:
                resolved.append(part)
        return self.root.joinpath(*resolved)

    def translate_command(self, command: str) -> str:
        """Device paths in a shell command point into the sandbox."""
        for prefix in DEVICE_ROOTS:
            command = command.replace(prefix, str(self.root) + prefix)
        return command

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DNAS_")}
        env["PATH"] = f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = str(self.root / "data/local/tmp")
        env["TMPDIR"] = str(self.root / "data/local/tmp")
        return env

    def _install_tools(self) -> None:
        """`getprop` answers from the props; `python3` is this host's Python (a device with Termux); `cmd`
        accepts the power-mode call phones take."""
        lines = [f"  {shlex.quote(k)}) echo {shlex.quote(v)} ;;" for k, v in self.props.items()]
        listing = "\n".join(f"echo {shlex.quote(f'[{k}]: [{v}]')}" for k, v in self.props.items())
        getprop = "#!/bin/sh\nif [ $# -eq 0 ]; then\n" + listing + '\nexit 0\nfi\ncase "$1" in\n' + "\n".join(lines)
        getprop += "\n  *) echo ;;\nesac\n"
        self._write_tool("getprop", getprop)
        self._write_tool("python3", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        self._write_tool("cmd", "#!/bin/sh\nexit 0\n")

    def _write_tool(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)
