"""Agent conformance suite: checks any agent (Python, Android, the iOS app) against PROTOCOL.md.

It starts its own service, registers a device, starts the agent under test with a command template, and
checks what a user relies on. Run it against any agent:

    python -m device_agents.conformance --agent "dnas agent local --wait 2"

The agent gets the service URL and its token as DNAS_AGENT_SERVER and DNAS_AGENT_TOKEN (the `dnas agent`
commands read them); a template may also use {server} and {token}.

The command must start an agent that keeps leasing until it is sent SIGTERM.

**A phone** (the iOS app, or any agent a person starts by hand) is checked with `--phone`: the suite serves
on this machine's network, prints a registration link (as a QR code for the phone's camera, and as text) and
the agent token, waits for the app to report its fingerprint, then runs the same checks on that one device
(all but the SIGTERM check, which needs a process the suite started):

    python -m device_agents.conformance --phone --public-url http://192.168.1.23:8321
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from profiler_service.local_server import Service, register, running_service, start_run, stop_process, wait_for_run
from search.space.enumerate import enumerate_ops
from search.space.macro import get_space

TINY_SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1", "skip"]}
CONFIG = {"threads": 1, "warmup": 2, "rounds": 5, "runs_per_round": 3}
# A config that makes one measurement outlast several leases: only a heartbeating agent keeps its jobs.
SLOW_SPACE = {"resolution": 64, "width": 0.25, "num_classes": 10, "candidates": ["ir_k5_e6"]}
SLOW_CONFIG = {"threads": 1, "warmup": 0, "rounds": 20, "runs_per_round": 500}
HEARTBEAT_LEASE_S = 1.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(ok), detail))


class AgentUnderTest:
    def __init__(self, template: str, workdir: Path) -> None:
        self.template, self.workdir = template, workdir
        self.proc: subprocess.Popen | None = None

    def start(self, svc: Service, token: str) -> None:
        """The server and token reach the agent as DNAS_AGENT_SERVER / DNAS_AGENT_TOKEN (never argv, where
        other users of the machine can read it), or through {server} / {token} for agents that need them."""
        cmd = self.template.format(server=svc.url, token=token)
        env = os.environ | {"DNAS_AGENT_SERVER": svc.url, "DNAS_AGENT_TOKEN": token}
        log = open(self.workdir / f"agent-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(shlex.split(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self, timeout_s: float = 60) -> int | None:
        return None if self.proc is None else stop_process(self.proc, timeout_s)


class PhoneAgent:
    """An agent the suite cannot start or stop: a phone a person registered once (`--phone`). Every check
    runs on its one device, whose token the phone holds."""

    phone = True

    def __init__(self, device: dict) -> None:
        self.device = device

    def start(self, svc: Service, token: str) -> None:
        pass

    def stop(self, timeout_s: float = 60) -> int | None:
        return None


def registration_link(server: str, token: str) -> str:
    """What the iOS app opens (its `dnas-agent` URL scheme): the server and the device's agent token."""
    return "dnas-agent://register?" + urllib.parse.urlencode({"server": server, "token": token})


def print_registration(server: str, token: str) -> None:
    link = registration_link(server, token)
    try:
        import qrcode

        qr = qrcode.QRCode(border=1)
        qr.add_data(link)
        qr.print_ascii(invert=True)
    except ImportError:  # the link below is enough: paste it into Safari on the phone
        pass
    print(f"Scan the code with the phone's camera, or open this link on the phone:\n  {link}")
    print(f"Or type them into the app:\n  server: {server}\n  token:  {token}", flush=True)


def _lan_address() -> str:
    """This machine's address on the network the phone is on (the route a packet to the internet would take;
    nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def _device(admin, agent, name: str) -> dict:  # type: ignore[no-untyped-def]
    return agent.device if getattr(agent, "phone", False) else register(admin, name)


def check_completes_a_run(svc: Service, agent: AgentUnderTest | PhoneAgent, report: Report, db_url: str) -> None:
    with svc.client() as admin:
        device = _device(admin, agent, "conformance-run")
        run = start_run(admin, device["id"], TINY_SPACE, CONFIG)
        agent.start(svc, device["agent_token"])
        run = wait_for_run(admin, run["id"], timeout_s=600)
        stopped = agent.stop()
        report.add("publishes a table", run["status"] == "published", json.dumps(run)[:300])
        fp = admin.get(f"/v1/devices/{device['id']}").json().get("fingerprint") or {}
        missing = [k for k in ("model", "os", "runtime", "runtime_version", "cores") if not fp.get(k)]
        report.add("reports a fingerprint", not missing, f"missing: {missing}" if missing else json.dumps(fp)[:200])
        if not getattr(agent, "phone", False):
            report.add("exits cleanly on SIGTERM", stopped == 0, f"exit status {stopped}")
        if run["status"] != "published":
            return
        entries = admin.get(f"/v1/devices/{device['id']}/latency-tables/{run['table_version']}").json()["entries"]
        bad = [e["key"] for e in entries if not (0 < e["p10_us"] <= e["median_us"] <= e["p90_us"])]
        report.add("results are ordered and positive", not bad, f"bad: {bad[:3]}")
        runs = CONFIG["rounds"] * CONFIG["runs_per_round"]
        wrong_n = [e["key"] for e in entries if e["n"] != runs]
        report.add("honours the run count", not wrong_n, f"n != {runs}: {wrong_n[:3]}")
        no_ctx = [
            e["key"] for e in entries if not e["context"].get("runtime_version") and not e["context"].get("runner")
        ]
        report.add("records the measurement context", not no_ctx, f"no context: {no_ctx[:3]}")
        protocol = admin.get(f"/v1/devices/{device['id']}").json().get("agent_protocol")
        report.add("declares its protocol version", protocol in (1, 2), f"agent_protocol = {protocol!r}")
        if protocol == 2:
            check_batches_and_rounds(db_url, device["id"], run["id"], run["total"], report)


def check_batches_and_rounds(db_url: str, device_id: int, run_id: int, total: int, report: Report) -> None:
    """Protocol 2: the run's jobs were leased as one batch, and every result carries its rounds."""
    from sqlalchemy import select

    from db.engine import make_engine, make_sessionmaker
    from db.models import Job, Measurement

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        mine = (Job.device_id == device_id) & (Job.run_id == run_id)
        tokens = set(s.scalars(select(Job.lease_token).where(mine)))
        rows = s.execute(
            select(Measurement.op_key, Measurement.rounds, Measurement.round_medians_us, Measurement.context)
            .where(Measurement.job_id.in_(select(Job.id).where(mine)))
        ).all()  # fmt: skip
    engine.dispose()
    report.add("leases a run as one batch", len(tokens) == 1 and len(rows) == total,
               f"{len(tokens)} lease tokens for {len(rows)} of {total} jobs")  # fmt: skip
    bad = [key for key, rounds, medians, _ in rows if rounds != CONFIG["rounds"] or len(medians or []) != rounds]
    report.add("measures in the configured rounds", not bad, f"wrong rounds or round medians: {bad[:3]}")
    methods = {(ctx or {}).get("method") for *_, ctx in rows}
    report.add("says how it measured", methods <= {"interleaved", "separate visits"} and None not in methods,
               f"context methods: {sorted(map(str, methods))}")  # fmt: skip


def check_heartbeats(svc: Service, agent: AgentUnderTest | PhoneAgent, report: Report, db_url: str,
                     lease_s: float = 1.0) -> None:  # fmt: skip
    from sqlalchemy import select

    from db.engine import make_engine, make_sessionmaker
    from db.models import Job

    with svc.client() as admin:
        device = _device(admin, agent, "conformance-heartbeat")
        body = {"device_id": device["id"], "space": SLOW_SPACE, "config": SLOW_CONFIG, "anchors": 0}
        run = admin.post("/v1/profiling-runs", json=body).raise_for_status().json()
        agent.start(svc, device["agent_token"])
        run = wait_for_run(admin, run["id"], timeout_s=900)
        agent.stop()
        version = run.get("table_version") or "latest"
        entries = admin.get(f"/v1/devices/{device['id']}/latency-tables/{version}").json().get("entries", [])
        batched = admin.get(f"/v1/devices/{device['id']}").json().get("agent_protocol") == 2
    # What must outlast the lease: one job's block of runs (protocol 1), or the whole batch (protocol 2).
    per_job = [e["median_us"] * e["n"] / 1e6 for e in entries]
    longest_s = sum(per_job) if batched else max(per_job, default=0.0)
    report.add(
        "the heartbeat check outlasted a lease",
        longest_s > 2 * lease_s,
        f"longest measurement {longest_s:.1f}s vs lease {lease_s}s",
    )
    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        jobs = s.execute(
            select(Job.op_key, Job.attempts, Job.heartbeat_at, Job.finished_at).where(
                (Job.device_id == device["id"]) & (Job.run_id == run["id"])
            )
        ).all()
    engine.dispose()
    # The last heartbeat of a job that outlasted its lease must fall within one lease of its end; without
    # heartbeats it stays at the claim time, a whole measurement earlier.
    silent = [
        key for key, _, beat, done in jobs
        if beat is not None and done is not None and (done - beat).total_seconds() > lease_s
    ]  # fmt: skip
    report.add(
        "keeps its lease with heartbeats",
        run["status"] == "published" and not silent and max(a for _, a, _, _ in jobs) == 1,
        f"status {run['status']}, jobs without a heartbeat near their end: {silent[:3]}",
    )


def check_refuses_corrupt_models(svc: Service, agent: AgentUnderTest | PhoneAgent, report: Report,
                                 artifacts: Path) -> None:  # fmt: skip
    with svc.client() as admin:
        device = _device(admin, agent, "conformance-checksum")
        # A resolution no other check uses: the agent cannot have this model cached already.
        space = {**TINY_SPACE, "resolution": 48, "candidates": ["skip"]}
        run = start_run(admin, device["id"], space, CONFIG)
        request = {k: space[k] for k in ("resolution", "width", "num_classes")}
        stem_key = enumerate_ops(get_space(candidates=("skip",), **request)).fixed_keys["stem"]
        model = artifacts / "onnx" / f"{stem_key}.onnx"
        data = model.read_bytes()
        model.write_bytes(data[: len(data) // 2])  # a download cut off halfway
        agent.start(svc, device["agent_token"])
        run = wait_for_run(admin, run["id"], timeout_s=600)
        agent.stop()
        report.add(
            "never measures a corrupt model",
            run["status"] == "failed" and run.get("table_version") is None and run["failed"] == 1,
            f"status {run['status']}, failed {run['failed']}, errors {run['errors'][:1]}",
        )
        model.write_bytes(data)


def run_suite(template: str, *, quick: bool = False) -> Report:
    report = Report()
    with tempfile.TemporaryDirectory(prefix="dnas-conformance-") as tmp:
        work = Path(tmp)
        db_url = f"sqlite:///{work / 'conformance.db'}"
        agent = AgentUnderTest(template, work)
        with running_service(db_url, work, lease_seconds=30) as svc:
            check_completes_a_run(svc, agent, report, db_url)
            check_refuses_corrupt_models(svc, agent, report, work / "artifacts")
        if not quick:  # its own service: a lease far shorter than one measurement
            hb_url = f"sqlite:///{work / 'heartbeat.db'}"
            with running_service(hb_url, work / "hb", lease_seconds=HEARTBEAT_LEASE_S) as svc:
                check_heartbeats(svc, agent, report, hb_url)
    return report


def run_phone_suite(*, port: int, public_url: str | None, platform: str, wait_s: float, quick: bool) -> Report:
    """One service on this machine's network, one device the person registers on the phone, every check."""
    report = Report()
    with tempfile.TemporaryDirectory(prefix="dnas-conformance-") as tmp:
        work = Path(tmp)
        db_url = f"sqlite:///{work / 'conformance.db'}"
        lease_s = 6.0  # a phone on Wi-Fi heartbeats every 2 s; still far shorter than the slow check's batch
        with running_service(db_url, work, port=port, lease_seconds=lease_s, DNAS_SERVICE_HOST="0.0.0.0") as svc:
            server = public_url or f"http://{_lan_address()}:{port}"
            with svc.client() as admin:
                device = register(admin, "conformance-phone", platform=platform)
                print_registration(server, device["agent_token"])
                print(f"Waiting up to {wait_s:.0f} s for the app to report its fingerprint...", flush=True)
                arrived = _wait(lambda: bool(admin.get(f"/v1/devices/{device['id']}").json().get("fingerprint")),
                                wait_s)  # fmt: skip
            report.add("registers and reports a fingerprint", arrived, "nothing arrived" if not arrived else "")
            if not arrived:
                return report
            phone = PhoneAgent(device)
            check_completes_a_run(svc, phone, report, db_url)
            check_refuses_corrupt_models(svc, phone, report, work / "artifacts")
            if not quick:
                check_heartbeats(svc, phone, report, db_url, lease_s=lease_s)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agent", help="Command (may use {server} and {token}; both also in env).")
    parser.add_argument("--phone", action="store_true", help="Check an agent a person starts on a phone.")
    parser.add_argument("--port", type=int, default=8321, help="--phone: the port the service listens on.")
    parser.add_argument("--public-url", help="--phone: the service URL as the phone reaches it (default: LAN IP).")
    parser.add_argument("--platform", default="ios", help="--phone: the device's platform (ios or android).")
    parser.add_argument("--wait", type=float, default=900, help="--phone: seconds to wait for the app.")
    parser.add_argument("--quick", action="store_true", help="Skip the slow heartbeat check.")
    args = parser.parse_args()
    if bool(args.agent) == args.phone:
        parser.error("give --agent COMMAND or --phone")
    if args.phone:
        report = run_phone_suite(port=args.port, public_url=args.public_url, platform=args.platform,
                                 wait_s=args.wait, quick=args.quick)  # fmt: skip
    else:
        report = run_suite(args.agent, quick=args.quick)
    for check in report.checks:
        print(f"{'PASS' if check.passed else 'FAIL'}  {check.name}  {check.detail if not check.passed else ''}")
    passed = sum(c.passed for c in report.checks)
    print(f"{passed} passed, {len(report.checks) - passed} failed")
    raise SystemExit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
