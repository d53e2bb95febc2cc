"""`POST /v1/latency-tables/import`: a published table (HW-NAS-Bench v1.0) becomes a version of an imported
device. Admin only: it creates a device and publishes a table. The body is the file itself (the whole
pickle, or its `fbnet` part as JSON); the choices are query parameters, so nothing has to be wrapped."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from db.models import Device
from profiler_service.api.deps import AdminDep, SessionDep
from profiler_service.api.strict_json import StrictJsonRoute, bulk_body
from profiler_service.errors import ApiError, Invalid
from profiler_service.imports import import_table
from profiler_service.schemas import TableSummary
from profiler_service.timeutil import as_utc
from search.space.macro import fbnet_space
from search.space.opspec import OpSpecError
from search.tables.hwnasbench import DATASETS, ImportRefused, build_import, read_fbnet_part

router = APIRouter(tags=["latency-tables"], route_class=StrictJsonRoute)

MAX_IMPORT_BYTES = 256 * 1024 * 1024  # far above HW-NAS-Bench v1.0's pickle, far below what would hurt a worker


class TooLarge(ApiError):
    status_code = 413


class ImportedPublic(BaseModel):
    device: dict[str, Any]
    table: TableSummary
    created: bool = Field(description="False: a version with these numbers already existed; it is returned.")
    ops: int
    zero_priced: int
    energy: bool = Field(description="The file had this device's energy: each entry carries it as energy_mj.")
    provenance: dict[str, Any]


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_IMPORT_BYTES:
        raise TooLarge(f"the file is {int(declared)} bytes; at most {MAX_IMPORT_BYTES} are taken")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_IMPORT_BYTES:
            raise TooLarge(f"the file is over {MAX_IMPORT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "These numbers were imported before: that version is returned."},
    413: {"description": "The file is too large."},
    422: {"description": "The file or the request cannot become a table: the reason."},
}
DeviceName = Query(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._\-]*$",
                   description="Default: hwnasbench-<hw_device>.")  # fmt: skip


@router.post("/latency-tables/import", status_code=201, response_model=ImportedPublic, dependencies=[AdminDep],
             responses=RESPONSES)  # fmt: skip
@bulk_body  # a published table file is megabytes
async def import_hwnasbench(
    request: Request,
    response: Response,
    session: SessionDep,
    hw_device: str = Query(max_length=32, description="edgegpu, raspi4, pixel3, eyeriss or fpga."),
    dataset: str = Query(default="cifar100", max_length=32, description="cifar100, imagenet or cifar10."),
    metric: str = Query(default="latency", max_length=32, description="latency (energy rides along with it)."),
    format: Literal["auto", "pickle", "json"] = "auto",
    device_name: str | None = DeviceName,
    resolution: int | None = Query(default=None, ge=16, le=1024, description="Space override: must still map."),
    width: float | None = Query(default=None, gt=0, le=4),
    head_c: int | None = Query(default=None, ge=1, le=8192),
    num_classes: int | None = Query(default=None, ge=1, le=100_000),
) -> ImportedPublic:
    """Import one device's FBNet-space table from HW-NAS-Bench v1.0 (read with a restricted unpickler: no code
    in the file runs). Every op of the space must be in the file, or nothing is stored and the answer names
    the first op that is not. The device (platform `imported`) is created on first import; it has no agent and
    cannot be profiled. The table is served by the usual routes, with its provenance."""
    data = await _body(request)

    def work() -> tuple[ImportedPublic, bool]:
        try:
            space = None
            overrides = {"resolution": resolution, "width": width, "head_c": head_c, "num_classes": num_classes}
            if any(v is not None for v in overrides.values()) and dataset in DATASETS:
                layout = DATASETS[dataset]
                space = fbnet_space(
                    resolution or layout.resolution,
                    width or 1.0,
                    num_classes=num_classes or layout.num_classes,
                    head_c=head_c or layout.head_c,
                )
            parts = read_fbnet_part(data, format)
            table = build_import(parts, hw_device=hw_device, dataset=dataset, metric=metric, space=space)
        except (ImportRefused, OpSpecError) as exc:
            raise Invalid(str(exc)) from None
        published, created = import_table(session, table=table, device_name=device_name)
        summary = TableSummary(device_id=published.device_id, version=published.version,
                               space_hash=published.space_hash, config_hash=published.config_hash,
                               content_sha256=published.content_sha256, etag=published.payload_sha256, run_id=None,
                               created_at=as_utc(published.created_at), entries=len(table.entries))  # fmt: skip
        device = session.get(Device, published.device_id)
        assert device is not None
        answer = ImportedPublic(device={"id": device.id, "name": device.name, "platform": device.platform},
                                table=summary, created=created, ops=len(table.entries),
                                zero_priced=len(table.zero_priced), energy=table.has_energy,
                                provenance=table.provenance())  # fmt: skip
        session.rollback()
        return answer, created

    answer, created = await run_in_threadpool(work)
    if not created:
        response.status_code = 200
    return answer
