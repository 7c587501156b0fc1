"""The study's error types: each message names the fix; the CLI prints it and exits 2."""

from __future__ import annotations


class SpecError(ValueError):
    """A spec that cannot run; the message lists every problem."""


class StudyError(RuntimeError):
    """A study that cannot start; the message names the fix."""
