"""Errors the API turns into 4xx JSON `{"detail": ..., "request_id": ...}` that a person can act on."""

from __future__ import annotations


class ApiError(Exception):
    status_code = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str] | None:
        return None


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class Unauthorized(ApiError):
    """RFC 6750: no token is a bare challenge; a token that is not valid says so in the challenge."""

    status_code = 401

    def __init__(self, detail: str, *, sent: bool = True) -> None:
        super().__init__(detail)
        self.sent = sent

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer error="invalid_token"' if self.sent else "Bearer"}


class Forbidden(ApiError):
    status_code = 403


class Invalid(ApiError):
    status_code = 422


class Unavailable(ApiError):
    status_code = 503


class TooLarge(ApiError):
    """413 before the body is read past the route's limit."""

    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes, the limit of this call")
