"""Prometheus metrics (prometheus-client): requests and their latency per route, and the queue as the
database sees it (queue depth, leases, runs, devices), read at scrape time so every worker reports the same.

With several uvicorn workers, `dnas serve` points `PROMETHEUS_MULTIPROC_DIR` at a fresh directory before the
workers start, and request counters from every worker are summed at scrape (prometheus-client's
multiprocess mode). Scraping needs a reader or admin token (Prometheus: `authorization: credentials`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from db.models import Device, Job, ProfilingRun
from db.states import JobStatus
from profiler_service.timeutil import utcnow

REQUESTS = Counter("dnas_http_requests", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram(
    "dnas_http_request_duration_seconds", "Time to answer an HTTP request (long polls included).", ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
# Summed over the live workers: how many agents hold a lease call waiting for work right now, and how many
# workers hear queued jobs announced (PostgreSQL; profiler_service/wakeups.py). Below the worker count, the
# waiting calls of the others poll the database.
LEASE_WAITING = Gauge("dnas_lease_waiting", "Lease calls (long polls) waiting for work.", multiprocess_mode="livesum")
LEASE_LISTENERS = Gauge(
    "dnas_lease_listeners", "Workers listening for queued jobs (PostgreSQL LISTEN).", multiprocess_mode="livesum"
)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# The method label's only values (and "other"): a method is any token the caller sends, and each new label
# value is a new series in every worker, for good, so an unauthenticated caller could grow the scrape at will.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_templates(routes: list[Any]) -> dict[int, str]:
    """Each route object -> its full path template. FastAPI 0.16x includes routers lazily (the route in the
    request scope is the router's own, without the /v1 prefix); older versions copy routes with full paths."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: routes are already flat
        return {id(r): r.path for r in routes if hasattr(r, "path")}
    return {id(ctx.original_route): ctx.path for ctx in iter_route_contexts(routes) if ctx.path}


class MetricsMiddleware:
    """Counts every answer by route template (never the raw path: a fuzzer would make endless series) and
    by method, from a fixed set."""

    def __init__(self, app: ASGIApp, routes: Callable[[], list[Any]]) -> None:
        self.app = app
        self._routes = routes
        self._templates: dict[int, str] | None = None

    def template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            return "unmatched"
        if self._templates is None:
            self._templates = route_templates(self._routes())
        return self._templates.get(id(route)) or getattr(route, "path", "unmatched")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # if the app raises before answering, ServerErrorMiddleware answers 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            template = self.template(scope)
            method = scope.get("method", "?")
            method = method if method in METHODS else "other"  # the caller chooses it: no label of theirs
            REQUESTS.labels(method, template, str(status)).inc()
            LATENCY.labels(method, template).observe(time.perf_counter() - start)


class QueueCollector(Collector):
    """Gauges computed from the database at scrape time: the same answer from every worker."""

    def __init__(self, sessions: sessionmaker) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = utcnow()
        with self.sessions() as session:
            yield from self._jobs(session, now)
            runs = GaugeMetricFamily("dnas_profiling_runs", "Profiling runs by status.", labels=["status"])
            for status, n in session.execute(select(ProfilingRun.status, func.count()).group_by(ProfilingRun.status)):
                runs.add_metric([status], n)
            yield runs
            devices = GaugeMetricFamily("dnas_devices", "Registered devices.", labels=["state"])
            retired = case((Device.retired_at.is_(None), "active"), else_="retired")
            for state, n in session.execute(select(retired, func.count()).group_by(retired)):
                devices.add_metric([state], n)
            yield devices

    @staticmethod
    def _jobs(session: Session, now) -> Iterator[GaugeMetricFamily]:  # type: ignore[no-untyped-def]
        jobs = GaugeMetricFamily("dnas_jobs", "Measurement jobs by status (queued = queue depth).", labels=["status"])
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        for status in JobStatus:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        leases = GaugeMetricFamily("dnas_leases", "Leased jobs: live, or expired and waiting to be taken back.",
                                   labels=["state"])  # fmt: skip
        expired = session.scalar(
            select(func.count()).where(Job.status == JobStatus.LEASED, Job.lease_expires_at < now)
        ) or 0  # fmt: skip
        leases.add_metric(["live"], counts.get(JobStatus.LEASED, 0) - expired)
        leases.add_metric(["expired"], expired)
        yield leases


def exposition(sessions: sessionmaker) -> bytes:
    """The text format: request metrics (summed over workers in multiprocess mode), then the queue gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    queue = CollectorRegistry()
    queue.register(QueueCollector(sessions))
    return generate_latest(registry) + generate_latest(queue)
