"""What can go wrong when asking an upstream resolver, under the one root `DnsguardError`.

Remote faults derive from `UpstreamError` (a `NetworkError`): the upstream timed out, refused, closed the
connection or sent something that is not a reply to our question. The resolver answers them with SERVFAIL
and the group fails over. `UpstreamBusyError` is the one local fault in that family: our own in-flight limit
was reached, the upstream itself may be fine, so it does not count against the upstream's health.

Caller misuse is told apart: a malformed query handed to a transport is a `FormError` raised before anything
is sent, and settings that make no sense (a negative timeout, an in-flight limit of zero) are an
`UpstreamUsageError` raised when the transport or group is built, never while a query runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from dnsguard.errors import DnsguardError, NetworkError

__all__ = [
    "AllUpstreamsFailedError",
    "UpstreamBusyError",
    "UpstreamError",
    "UpstreamReplyError",
    "UpstreamTimeoutError",
    "UpstreamUsageError",
]


class UpstreamUsageError(DnsguardError, ValueError):
    """A transport or group was given settings that cannot work; a bug in the caller, not a remote fault.

    It is a ValueError too, which is what such settings raised before this class existed.
    """


class UpstreamError(NetworkError):
    """An upstream resolver did not deliver a usable reply."""

    def __init__(self, upstream: str, message: str) -> None:
        self.upstream = upstream
        self.message = message
        super().__init__(f"{upstream}: {message}")


class UpstreamTimeoutError(UpstreamError):
    """An upstream did not answer within the time given."""


class UpstreamBusyError(UpstreamError):
    """The local in-flight limit for an upstream (or group) is reached; the upstream itself may be fine."""


class UpstreamReplyError(UpstreamError):
    """An upstream answered with something that is not a reply to our query (HTTP error, wrong question)."""


class AllUpstreamsFailedError(UpstreamError):
    """Every upstream tried for a query failed (or the group's deadline passed); carries each failure."""

    def __init__(self, group: str, errors: Sequence[UpstreamError]) -> None:
        self.errors = tuple(errors)
        detail = "; ".join(str(error) for error in self.errors) or "no upstream could be tried in time"
        super().__init__(group, f"all upstreams failed: {detail}")
