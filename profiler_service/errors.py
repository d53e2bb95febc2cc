"""Errors the API turns into 4xx JSON `{"detail": ...}` that a person can act on."""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class Invalid(ApiError):
    status_code = 422
