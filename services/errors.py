"""Errors the core raises; the doors (HTTP, CLI, tasks) turn them into responses."""

from __future__ import annotations


class SemtagError(Exception):
    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class BadInput(SemtagError):
    code = "bad_input"


class NotFound(SemtagError):
    code = "not_found"


class Unauthorized(SemtagError):
    code = "unauthorized"


class Conflict(SemtagError):
    code = "conflict"
