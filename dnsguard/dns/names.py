"""Domain names as every table compares them: one value type, made in one place."""

from __future__ import annotations

from typing import NewType

DomainName = NewType("DomainName", str)
"""A name in the form queries arrive in from `wire.parse_query`: lower case, no trailing dot, "." for the
root. The configuration folds its names into it once, at load; rewrites, conditional zones and special-use
tables are keyed by it and never fold again."""


def fold_name(text: str) -> DomainName:
    """`text` (already checked to be an ASCII domain name) in the compared form."""
    return DomainName(text.strip().lower().rstrip(".") or ".")
