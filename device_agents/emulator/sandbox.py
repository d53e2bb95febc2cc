"""The emulated device's file system and environment: device paths live under a host folder."""

from __future__ import annotations

import os
import shlex
import shutil
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
    "ro.build.fingerprint": "dnas/dnas_emu/emu:14/UP1A.231005.007/1:user/release-keys",
    "ro.serialno": "EMULATOR0001",
}
DEVICE_ROOTS = ("/data", "/sdcard", "/storage", "/system/bin", "/sys/devices/system/cpu")
# What a stock phone's shell offers (toybox): in stock mode only these host tools are on the PATH, so
# `python3` is missing exactly as it is on a phone.
TOYBOX = ("sh", "cat", "sed", "sha256sum", "taskset", "nproc", "mkdir", "chmod", "rm", "ls", "test", "[",
          "sleep", "head", "tail", "grep", "cut", "tr", "wc", "env", "uname", "mv", "cp", "ln", "touch", "date",
          "kill", "stat", "readlink", "dirname", "basename", "true", "false", "printf", "echo", "xargs", "find",
          "sort", "uniq", "md5sum")  # fmt: skip
STATE = "emulator"  # folder in the sandbox holding what dumpsys reports: tests change it while a batch runs


class Sandbox:
    """`stock=True` acts as a stock phone: no python3, a toybox-sized PATH, and `cmd` refusing the
    performance-mode call. `cpu_max_khz` gives each core's cpuinfo_max_freq (default: the last core of this
    host is the "big" one, so the default pin mask lands on it)."""

    def __init__(self, root: Path, props: dict[str, str] | None = None, *, stock: bool = False,
                 cpu_max_khz: list[int] | None = None) -> None:  # fmt: skip
        self.root = root.resolve()
        self.props = DEFAULT_PROPS | (props or {})
        self.stock = stock
        self.bin = self.root / "system" / "bin"
        for sub in ("data/local/tmp", "sdcard", "system/bin", STATE):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._install_cpus(cpu_max_khz)
        self._install_state()
        self._install_tools()

    def set_state(self, *, thermal_status: int | None = None, battery_tenths_c: int | None = None) -> None:
        """What `dumpsys thermalservice` / `dumpsys battery` report from now on."""
        if thermal_status is not None:
            (self.root / STATE / "thermal_status").write_text(f"{thermal_status}\n")
        if battery_tenths_c is not None:
            (self.root / STATE / "battery_temperature").write_text(f"{battery_tenths_c}\n")

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
        env["PATH"] = str(self.bin) if self.stock else f"{self.bin}:{env.get('PATH', '/usr/bin:/bin')}"
        env["HOME"] = str(self.root / "data/local/tmp")
        env["TMPDIR"] = str(self.root / "data/local/tmp")
        return env

    def _install_cpus(self, max_khz: list[int] | None) -> None:
        n = os.cpu_count() or 1
        freqs = max_khz or [1_800_000] * (n - 1) + [2_800_000]
        for cpu, khz in enumerate(freqs):
            folder = self.root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "cpuinfo_max_freq").write_text(f"{khz}\n")
            (folder / "scaling_governor").write_text("schedutil\n")

    def _install_state(self) -> None:
        if not (self.root / STATE / "thermal_status").exists():
            self.set_state(thermal_status=0, battery_tenths_c=312)

    def _install_tools(self) -> None:
        """`getprop` answers from the props; `dumpsys` reports thermal status and battery temperature from the
        state folder; `id`/`whoami` answer `shell`, the adb user of a phone. Unless stock: `python3` is this
        host's Python (a device with Termux or a Linux board) and `cmd` accepts the power-mode call."""
        if self.stock:
            for tool in TOYBOX:
                target = shutil.which(tool)
                link = self.bin / tool
                if target and not link.exists():
                    link.symlink_to(target)
            for gone in ("python3", "python"):
                (self.bin / gone).unlink(missing_ok=True)
            self._write_tool("cmd", '#!/bin/sh\necho "cmd: Failure calling service power: Failed transaction '
                             '(2147483646)" >&2\nexit 255\n')  # fmt: skip
        else:
            self._write_tool("python3", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        state = shlex.quote(str(self.root / STATE))
        if not self.stock:  # the calls are logged, so a test can see the mode switched on and back off
            self._write_tool("cmd", f'#!/bin/sh\necho "$@" >> {state}/cmd.log\nexit 0\n')
        dumpsys = (
            '#!/bin/sh\ncase "$1" in\n'
            '  thermalservice) echo "IsStatusOverride: false"; '
            f'echo "Thermal Status: $(cat {state}/thermal_status)" ;;\n'
            '  battery) echo "Current Battery Service state:"; echo "  USB powered: true"; '
            f'echo "  temperature: $(cat {state}/battery_temperature)" ;;\n'
            '  *) echo "Can\'t find service: $1" ;;\nesac\n'
        )
        self._write_tool("dumpsys", dumpsys)
        self._write_tool(
            "id", '#!/bin/sh\nif [ "$1" = "-un" ]; then echo shell; else echo "uid=2000(shell) gid=2000(shell)"; fi\n'
        )
        self._write_tool("whoami", "#!/bin/sh\necho shell\n")

        lines = [f"  {shlex.quote(k)}) echo {shlex.quote(v)} ;;" for k, v in self.props.items()]
        listing = "\n".join(f"echo {shlex.quote(f'[{k}]: [{v}]')}" for k, v in self.props.items())
        getprop = "#!/bin/sh\nif [ $# -eq 0 ]; then\n" + listing + '\nexit 0\nfi\ncase "$1" in\n' + "\n".join(lines)
        getprop += "\n  *) echo ;;\nesac\n"
        self._write_tool("getprop", getprop)

    def _write_tool(self, name: str, text: str) -> None:
        path = self.bin / name
        path.unlink(missing_ok=True)
        path.write_text(text)
        path.chmod(0o755)
