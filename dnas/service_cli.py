"""`dnas serve`, `dnas device ...`, `dnas profile`, `dnas table ...`: the service and its REST API."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from dnas.errors import UserError
from dnas.options import SPACE, Candidates, Classes, HeadC, Resolution, SpaceName, Width, space_options
from search.tables.client import ServiceClient, ServiceError, not_published
from search.tables.predict import N_ANCHORS

Server = Annotated[str, typer.Option("--server", envvar="DNAS_SERVER", help="Service URL.")]
Token = Annotated[str | None, typer.Option("--token", envvar="DNAS_TOKEN", help="Admin or reader token.")]
DEFAULT_SERVER = "http://127.0.0.1:8321"
WORKER_HEALTHCHECK_S = 60
Precision = Annotated[
    str, typer.Option(help="fp32, or int8: every op, probe and anchor network quantized by one recipe (QDQ static).")
]
PrecisionFilter = Annotated[
    str | None,
    typer.Option(help="Only tables measured at this precision (fp32 or int8); a table of another is never taken."),
]


def _check_precision(value: str | None) -> str | None:
    if value is not None and value not in ("fp32", "int8"):
        raise UserError(f"--precision must be fp32 or int8, not {value!r}")
    return value


device_app = typer.Typer(no_args_is_help=True, help="Measurement targets: register, list, show.")
table_app = typer.Typer(no_args_is_help=True, help="Latency tables: fetch one, compare two, import a published one.")


def connect(server: str, token: str | None, timeout: float = 120.0) -> ServiceClient:
    """The typed client (search/tables/client.py) for a command; every command here needs a token."""
    if not token:
        raise UserError("no token: pass --token or set DNAS_TOKEN (the admin token, or a reader token to read)")
    return ServiceClient(server, token, timeout=timeout)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (DNAS_SERVICE_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (DNAS_SERVICE_PORT).")] = None,
    workers: Annotated[int | None, typer.Option(help="uvicorn workers; use PostgreSQL for more than 1.")] = None,
) -> None:
    """Migrate the database, make sure an admin token exists, then serve the API with uvicorn."""
    import os
    import shutil
    import tempfile

    from pydantic import ValidationError

    from profiler_service.settings import ServiceSettings

    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items() if v is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:  # a bad setting is the user's to fix: one line, not a traceback
        parts = [
            (f"DNAS_SERVICE_{'_'.join(map(str, e['loc'])).upper()}: " if e["loc"] else "")
            + e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        ]
        raise UserError("service settings: " + "; ".join(parts)) from None
    if settings.workers > 1 and settings.database_url.startswith("sqlite"):
        typer.echo("warning: several workers on SQLite serialise every write; use PostgreSQL", err=True)
    # Request metrics from every worker are summed at scrape time (prometheus-client's multiprocess mode): the
    # directory must exist, and be empty, before the first worker imports prometheus_client.
    metrics_dir = None
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="dnas-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    import uvicorn

    from profiler_service.app import prepare
    from profiler_service.request_id import log_config
    from profiler_service.security import RevokedAdminToken

    try:
        token = prepare(settings)
    except RevokedAdminToken as exc:  # the operator's to fix: one line, not a traceback
        raise UserError(str(exc)) from None
    if token:
        typer.echo(f"admin token (shown once, store it): {token}", err=True)
    # Workers rebuild settings from the environment: pass the resolved values down that way. A URL built from
    # parts carries the password, so workers rebuild it from the same parts instead of inheriting it.
    built_url = {"database_url"} if settings.database_host else set()
    for name, value in settings.model_dump(exclude=built_url).items():
        if value is not None:
            os.environ[f"DNAS_SERVICE_{name.upper()}"] = str(value)
    where = settings.public_url or f"http://{settings.host}:{settings.port}"
    typer.echo(f"dashboard: {where}/ui (sign in with the admin or a reader token)", err=True)
    try:
        uvicorn.run(
            "profiler_service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            # X-Forwarded-For and -Proto only from the proxies named: from anyone else they are a caller's claim.
            proxy_headers=True,
            forwarded_allow_ips=settings.forwarded_allow_ips,
            # A worker answers its supervisor's health pings only once it has re-imported the program that
            # started it (the `dnas` console script: unlike `python -m`, spawn re-runs it) and uvicorn. With
            # uvicorn's 5 s default, a loaded 2-core host killed and restarted every worker forever.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            log_config=log_config(),
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@device_app.command("register")
def device_register(
    name: str,
    platform: Annotated[str, typer.Option(help="android, ios, linux, macos, windows or other.")] = "linux",
    prop: Annotated[list[str] | None, typer.Option("--prop", help="KEY=VALUE property; repeatable.")] = None,
    agent_token_file: Annotated[
        Path | None,
        typer.Option(
            help="Write the agent token to this file (mode 0600) instead of printing it; the agent "
            "reads it with --token-file."
        ),
    ] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Register a device; prints its id and agent token (shown once), or writes the token to a file."""
    from profiler_service.provision import write_secret

    props = {}
    for item in prop or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--prop {item!r} must be KEY=VALUE")
        props[key] = value
    if agent_token_file is not None and agent_token_file.exists():
        raise UserError(f"{agent_token_file} exists; remove it or pick another --agent-token-file")
    out = connect(server, token).register_device(name, platform, props)
    if agent_token_file is not None:
        try:
            write_secret(agent_token_file, out.pop("agent_token"), replace=False)
        except FileExistsError:  # created by someone else since the check above: theirs is kept
            raise UserError(
                f"{agent_token_file} appeared while device {out['id']} was registered; its token was not "
                f"written: issue a new one with POST /v1/devices/{out['id']}/rotate-token"
            ) from None
        out["agent_token_file"] = str(agent_token_file)
    typer.echo(json.dumps(out, indent=2))


@device_app.command("list")
def device_list(server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    for d in connect(server, token).devices():
        fp = d.get("fingerprint") or {}
        typer.echo(f"{d['id']:4d}  {d['name']:24s} {d['platform']:8s} {fp.get('model') or '-'}")


@device_app.command("show")
def device_show(device_id: int, server: Server = DEFAULT_SERVER, token: Token = None) -> None:
    typer.echo(json.dumps(connect(server, token).device(device_id), indent=2))


def profile(
    device: Annotated[int, typer.Option("--device", help="Device id.")],
    space: SpaceName = SPACE.name,
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    classes: Classes = SPACE.num_classes,
    head_c: HeadC = None,
    candidates: Candidates = None,
    threads: Annotated[int, typer.Option(help="Runtime threads.")] = 1,
    warmup: Annotated[int, typer.Option(help="Untimed runs per op when it is loaded.")] = 10,
    rounds: Annotated[
        int | None, typer.Option(help="Interleaved rounds over every op of the run (default 20).")
    ] = None,
    runs_per_round: Annotated[int | None, typer.Option(help="Timed runs per op and round (default 3).")] = None,
    runs: Annotated[
        int | None, typer.Option(help="Timed runs per op in all, spread over min(20, runs) rounds.")
    ] = None,
    anchors: Annotated[
        int, typer.Option(help="Whole networks measured with the ops to fit the table's rule (some skip-heavy).")
    ] = N_ANCHORS,
    precision: Precision = "fp32",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the table, with a progress bar.")] = False,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Profile a search space on a device; with --wait, until its latency table is published."""
    target = space_options(space, resolution, width, classes, head_c, candidates)  # refused here, not by a 422
    client = connect(server, token, timeout=1800)  # the service exports (int8: quantizes) every op first
    config = {"threads": threads, "warmup": warmup, "runs": runs, "rounds": rounds, "runs_per_round": runs_per_round,
              "precision": _check_precision(precision)}  # fmt: skip
    run = client.start_run(
        device,
        target.model_dump(exclude_none=True),
        {k: v for k, v in config.items() if v is not None},  # the service fills in its defaults
        anchors=anchors,
    )
    typer.echo(f"run {run['id']}: {run['total']} jobs (ops, call-overhead probes, anchor networks), "
               f"{run['done']} already measured", err=True)  # fmt: skip
    if wait:
        run = client.wait_for_run(run["id"], progress=True)
    typer.echo(json.dumps(run, indent=2))
    why = not_published(run)
    if why and (wait or run["status"] != "running"):  # without --wait, a running run is what was asked for
        raise UserError(why)


@table_app.command("get")
def table_get(
    device: Annotated[int, typer.Option("--device", help="Device id.")],
    version: Annotated[str, typer.Option(help="Version number or 'latest'.")] = "latest",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON.")] = False,
    space_hash: Annotated[str | None, typer.Option(help="Only tables of this space (its hash).")] = None,
    precision: PrecisionFilter = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Fetch one table version ('latest': the newest, of a space and a precision if given)."""
    text = connect(server, token).table_text(device, version, csv=csv, space_hash=space_hash,
                                             precision=_check_precision(precision))  # fmt: skip
    if output:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)
    else:
        typer.echo(text)


@table_app.command("list")
def table_list(
    device: Annotated[int, typer.Option("--device", help="Device id.")],
    space_hash: Annotated[str | None, typer.Option(help="Only tables of this space (its hash).")] = None,
    precision: PrecisionFilter = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """A device's table versions, oldest first: a device holds tables for several spaces and precisions."""
    params: dict[str, Any] = {"limit": 1000}
    if space_hash:
        params["space_hash"] = space_hash
    if _check_precision(precision):
        params["precision"] = precision
    for t in ServiceClient(server, token).json("GET", f"/v1/devices/{device}/latency-tables", params=params):
        typer.echo(f"v{t['version']:<4d} {t.get('precision', 'fp32'):5s} space {t['space_hash'][:12]}  "
                   f"{t['entries']:4d} ops  {t['created_at']}")  # fmt: skip


@table_app.command("compare")
def table_compare(
    a: Annotated[str, typer.Argument(help="DEVICE:VERSION[:PRECISION] (1:latest:int8), or a table file")],
    b: Annotated[str, typer.Argument(help="DEVICE:VERSION[:PRECISION], or a table file (then both are files)")],
    png: Annotated[Path | None, typer.Option(help="Also write the chart here (and the layer map).")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Per-op latency ratio of two tables; the ops that differ most first. Two published table files (the JSON
    the service serves, e.g. a dashboard download) are compared here, without a service."""
    if Path(a).is_file() and Path(b).is_file():
        result, picture = _compare_files(Path(a), Path(b), png is not None)
    else:
        client = connect(server, token)
        result = client.compare(a, b)
        picture = client.compare_png(a, b) if png else None
    median = result["median_ratio"]
    typer.echo(f"{result['shared_ops']} shared ops, median ratio b/a = " + (f"{median:.3f}" if median else "-"))
    for row in result["ops"][:15]:
        ratio = f"{row['ratio']:6.2f}x" if row["ratio"] else "     -"  # an op priced 0 on either side
        typer.echo(f"  {ratio}  {row['a_us']:9.1f} -> {row['b_us']:9.1f} us  {row['key']}")
    if png and picture is not None:
        png.write_bytes(picture)
        typer.echo(f"wrote {png}", err=True)


def _compare_files(a: Path, b: Path, draw: bool) -> tuple[dict[str, Any], bytes | None]:
    """The service's own comparison (profiler_service/compare.py) on two table files."""
    from profiler_service.compare import by_layer, compare, compare_png

    tables = []
    for path in (a, b):
        try:
            table = json.loads(path.read_text())
            needed = ("device", "version", "content_sha256", "entries")
            if not isinstance(table, dict) or any(k not in table for k in needed):
                raise ValueError(f"it lacks one of {', '.join(needed)}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is not a published latency table (JSON): {exc}") from None
        tables.append(table)
    result = compare(*tables)
    return result, compare_png(result, 20, by_layer(result, tables[0])) if draw else None


@table_app.command("import")
def table_import(
    file: Annotated[Path, typer.Argument(help="HW-NAS-Bench-v1_0.pickle, or its 'fbnet' part as JSON.")],
    hw: Annotated[str, typer.Option("--hw", help="edgegpu, raspi4, pixel3, eyeriss or fpga.")],
    dataset: Annotated[str, typer.Option(help="cifar100 (32 px, head 1504), imagenet (224 px) or cifar10.")] = (
        "cifar100"
    ),
    metric: Annotated[str, typer.Option(help="latency; energy, where published, comes with it.")] = "latency",
    name: Annotated[str | None, typer.Option("--name", help="Device name (default hwnasbench-<hw>).")] = None,
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """Publish a device's table from HW-NAS-Bench v1.0 on the service (admin token). The service reads the
    file with a restricted unpickler and refuses a space that does not map exactly, naming the op."""
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
    params = {"hw_device": hw, "dataset": dataset, "metric": metric}
    if name:
        params["device_name"] = name
    answer = connect(server, token).import_table(data, **params)
    device, table = answer["device"], answer["table"]
    verb = "imported" if answer["created"] else "already imported"
    typer.echo(f"{verb}: device {device['id']} ({device['name']}, platform {device['platform']}) table "
               f"v{table['version']}, space {table['space_hash'][:12]}")  # fmt: skip
    energy = "energy (mJ) in each entry's context" if answer["energy"] else "no energy published for this device"
    typer.echo(f"  {answer['ops']} ops, {answer['zero_priced']} priced 0, {energy}")
    typer.echo(f"  source: {answer['provenance']['source']} ({answer['provenance']['obtained']})")


def validate(
    device: Annotated[
        list[int] | None,
        typer.Option(
            "--device", help="Device id (an agent must be serving it). With --arch: only these of its devices."
        ),
    ] = None,
    arch: Annotated[
        list[Path] | None,
        typer.Option(
            "--arch",
            help="Measure searched architectures instead of random ones, on every device they were searched "
            "for: a search's --out folder (every device's chosen network) or architecture JSON files; repeatable.",
        ),
    ] = None,
    samples: Annotated[int, typer.Option(help="Random architectures to measure end to end.")] = 20,
    space: SpaceName = SPACE.name,
    resolution: Resolution = SPACE.resolution,
    width: Width = SPACE.width,
    classes: Classes = SPACE.num_classes,
    head_c: HeadC = None,
    candidates: Candidates = None,
    version: Annotated[str, typer.Option(help="Table version to check ('latest' or a number).")] = "latest",
    precision: PrecisionFilter = None,
    calibrate: Annotated[bool, typer.Option(help="Fit and store a calibration beside the raw table.")] = False,
    seed: Annotated[int, typer.Option(help="Which random architectures.")] = 0,
    out: Annotated[Path, typer.Option(help="Where fidelity.json and fidelity.png go.")] = Path("fidelity"),
    server: Server = DEFAULT_SERVER,
    token: Token = None,
) -> None:
    """How far a table is from whole networks measured end to end, next to the noise of measuring them; with
    --arch, searched architectures measured on each device they target (the cross-device matrix)."""
    from dnas.options import build_space
    from search.tables.fidelity import FidelityError
    from search.tables.fidelity import validate as run_validate

    # Networks are exported (and at int8 quantized) inside the POST that queues them: minutes at 224 px.
    client = connect(server, token, timeout=1800)
    if arch:
        return _validate_searched(arch, device, out, client)
    if not device or len(device) != 1:
        raise UserError("give one --device (random architectures are checked against one device's table)")
    target = build_space(space_options(space, resolution, width, classes, head_c, candidates))
    try:
        report = run_validate(client, device[0], target, samples, out, calibrate=calibrate,
                              seed=seed, version=version, precision=_check_precision(precision))  # fmt: skip
    except FidelityError as exc:
        raise UserError(str(exc)) from None
    typer.echo(f"{samples} networks on device {device[0]}, table v{report['table_version']} "
               f"({report['precision']}, rule: {report['prediction_rule']}):")  # fmt: skip
    rows = [("table rule", report["raw"])]
    if "calibrated_held_out" in report:
        rows.append(("calibrated*", report["calibrated_held_out"]))
    if "noise_ceiling" in report:
        rows.append(("noise ceiling", report["noise_ceiling"]))
    if "drift_adjusted" in report:
        rows.append(("drift-adjusted", report["drift_adjusted"]))
    if "calibrated_held_out_drift_adjusted" in report:  # what the calibration's gate compares with the line above
        rows.append(("calibrated*, drift-adj.", report["calibrated_held_out_drift_adjusted"]))
    for name, m in rows:
        typer.echo(
            f"  {name:23s} within 5%: {m['within_5_pct']:4.0%}  within 10%: {m['within_10_pct']:4.0%}  "
            f"MAPE {m['mape_pct']:5.2f}%  worst {m['worst_error_pct']:+6.2f}%  Kendall tau {m['kendall_tau']:.3f}"
        )
    typer.echo("  noise ceiling: the same networks' even rounds against their odd rounds (two half-length runs)")
    if "drift" in report:
        typer.echo(f"  drift since profiling (anchor networks now / then): {report['drift']['ratio'] - 1:+.1%}")
    cal = report.get("calibration")
    if cal and cal.get("stored"):
        typer.echo(f"  * 5-fold held out; stored as calibration v{cal['version']} (dnas search applies it)")
    elif cal:
        typer.echo(f"  calibration not stored: {cal['why']}")
    typer.echo(f"wrote {out / 'fidelity.json'} and {out / 'fidelity.png'}")
    _upload_report(connect(server, token), device[0], report)


def _finite(value: Any) -> Any:
    """JSON has no NaN (Kendall's tau of fewer than 2 networks is one): such a figure is sent as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _upload_report(client: ServiceClient, device: int, report: dict[str, Any]) -> None:
    """The service keeps the report for the dashboard's fidelity page; the local files are written already, so
    a service that cannot keep it (older, or a reader token) costs a note, not the check."""
    try:
        stored = client.store_validation(device, _finite(report))
    except ServiceError as exc:
        typer.echo(f"note: the service did not keep this report ({exc})")
        return
    typer.echo(f"the service keeps it as validation report {stored['id']} (dashboard: /ui/devices/{device}/fidelity)")


def _validate_searched(paths: list[Path], devices: list[int] | None, out: Path, client: ServiceClient) -> None:
    """`dnas validate --arch ...`: the searched architectures measured on each of their devices."""
    from search.tables.cross_device import measure_on_devices, searched_architectures
    from search.tables.fidelity import FidelityError

    try:
        report = measure_on_devices(client, searched_architectures(paths), out, devices or None)
    except FidelityError as exc:
        raise UserError(str(exc)) from None
    m = report["matrix"]
    width = max(len(a) for a in m["architectures"]) + 2
    typer.echo(f"{'':{width}s}" + "".join(f"{d[:22]:>24s}" for d in m["devices"]))
    for name, pred, meas in zip(m["architectures"], m["predicted_ms"], m["measured_ms"], strict=True):
        cells = "".join(f"{p:9.3f} / {q:7.3f} ms  " for p, q in zip(pred, meas, strict=True))
        typer.echo(f"{name:{width}s}{cells}")
    typer.echo("(each cell: predicted by the device's table / measured end to end)")
    for row in report["own_fastest"]:
        verdict = ", ".join(f"{k.replace('_', ' ')}: {'yes' if v else 'NO'}" for k, v in row["fastest_here"].items())
        typer.echo(f"{row['architecture']} fastest on {row['device']}? {verdict}")
    for row in report["budgets"]:
        typer.echo(f"{row['architecture']} on {row['device']}: budget {row['budget_ms']:.3f} ms, predicted "
                   f"{row['predicted_ms']:.3f} ({'within' if row['within_predicted'] else 'OVER'}), measured "
                   f"{row['measured_ms']:.3f} ({'within' if row['within_measured'] else 'OVER'})")  # fmt: skip
    for d in report["devices"]:
        if d["drift"] is not None:
            typer.echo(f"drift on {d['label']} since profiling (anchor networks now / then): {d['drift'] - 1:+.1%}")
    typer.echo(f"wrote {out / 'cross_device.json'} and {out / 'cross_device.png'}")
