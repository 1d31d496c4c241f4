"""Outcomes read from judged records: the fluency fields the shared judged loop writes.

A record without them is an error, never read as plain `match`, so tuning and the paired tests
cannot silently score judged accuracy as fluent accuracy.
"""
from __future__ import annotations

from typing import Any, Mapping

from emojax.runs import InputError


def fluent_match(record: Mapping[str, Any]) -> int:
    """judge.fluent_match (0/1) of a judged record; a record without it is an error, never read as
    plain `match`."""
    try:
        value = record["judge"]["fluent_match"]
    except (KeyError, TypeError):
        raise InputError(f"record {record.get('key', '?')!r} has no judge.fluent_match: the fluency fields "
                         f"of the judged loop are missing") from None
    if value not in (0, 1):
        raise InputError(f"record {record.get('key', '?')!r}: judge.fluent_match must be 0 or 1, got {value!r}")
    return int(value)


def fluent(record: Mapping[str, Any]) -> int:
    try:
        return int(record["judge"]["fluent"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"record {record.get('key', '?')!r} has no judge.fluent: the fluency fields of the "
                         f"judged loop are missing") from None
