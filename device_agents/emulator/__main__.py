"""python -m device_agents.emulator --port 5555 --sandbox DIR [--props props.json] [--no-auth] [--stock]
[--usb-bus DIR] [--cpu-max-khz 1800000,2800000]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path

from device_agents.emulator.device import EmulatedDevice


def main() -> None:
    parser = argparse.ArgumentParser(description="An ADB device over TCP, executing in a sandbox folder.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5555)
    parser.add_argument("--sandbox", type=Path, required=True, help="Folder standing in for the device's disk.")
    parser.add_argument("--props", type=Path, help="JSON object of getprop values to report.")
    parser.add_argument("--no-auth", action="store_true", help="Skip RSA authentication (like ro.adb.secure=0).")
    parser.add_argument("--refuse-new-keys", action="store_true", help="Only keys already in adb_keys get in.")
    parser.add_argument(
        "--stock", action="store_true", help="Act as a stock phone: no python3, a toybox PATH, `cmd power` refused."
    )
    parser.add_argument(
        "--usb-bus",
        type=Path,
        help="Also attach to this emulated USB bus (a folder; the socket is named by ro.serialno).",
    )
    parser.add_argument("--cpu-max-khz", help="Comma-separated cpuinfo_max_freq per core (default: last core big).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    props = json.loads(args.props.read_text()) if args.props else None
    freqs = [int(f) for f in args.cpu_max_khz.split(",")] if args.cpu_max_khz else None
    device = EmulatedDevice(args.sandbox, props=props, require_auth=not args.no_auth,
                            accept_new_keys=not args.refuse_new_keys, stock=args.stock, cpu_max_khz=freqs)  # fmt: skip

    async def run() -> None:
        server = await device.serve(args.host, args.port)
        usb = await device.serve_usb(args.usb_bus) if args.usb_bus else None
        port = server.sockets[0].getsockname()[1]
        usb_note = f" and on usb {device.sandbox.props['ro.serialno']}" if usb else ""
        print(f"adb device emulator listening on {args.host}:{port}{usb_note}", flush=True)
        # SIGTERM ends the emulator through the finally below, so its perf_test server is gone when it is.
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
        try:
            await stopped.wait()
        finally:  # not wait_closed(): from Python 3.12.1 it waits for every client (an agent's link) to hang up
            server.close()
            if usb is not None:
                usb.close()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())
    finally:
        device.close()


if __name__ == "__main__":
    main()
