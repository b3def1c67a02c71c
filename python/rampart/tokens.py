"""NATS subject rules for the ids Rampart puts in subjects."""

from __future__ import annotations

import re

__all__ = ["is_subject", "is_token"]

# NATS subject rules: a token is non-empty with no whitespace, '.', '*' or '>'.
_TOKEN = re.compile(r"[^\s.*>]+")
_SUBJECT = re.compile(r"[^\s.*>]+(?:\.[^\s.*>]+)*")


def is_token(value: str) -> bool:
    """True when ``value`` can be one token of a NATS subject (gateway ids, symbols)."""
    return _TOKEN.fullmatch(value) is not None


def is_subject(value: str) -> bool:
    """True when ``value`` is tokens joined by dots (algorithm ids like ``momentum-v2.1.0``)."""
    return _SUBJECT.fullmatch(value) is not None
