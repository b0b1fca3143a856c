"""The exception hierarchy: every error dnsguard raises derives from DnsguardError.

Two families tell who has to act. A UsageError is this side's: the caller asked for something that cannot
be done (a bad configuration, a missing privilege, an input not valid in the current state), and retrying
the same call fails the same way. A ProtocolError or NetworkError is the far side's or the path's: a peer or
an upstream sent something malformed, or the network or the kernel refused; the daemon counts, retries or
falls back. Library exceptions (OSError, pyroute2's NetlinkError, aiohttp's) are mapped to these at the
edge where they arise (dnsguard/net/), with a one-line message.
"""

from __future__ import annotations

from collections.abc import Sequence


class DnsguardError(Exception):
    """Root of every dnsguard error."""


class UsageError(DnsguardError):
    """The caller or its configuration asked for what cannot be done: fix the call, not the network."""


class ConfigError(UsageError):
    """A configuration file is invalid; carries where (file, line) and which key."""

    def __init__(
        self, message: str, *, file: str | None = None, line: int | None = None, key: str | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            where = f"{where}: {self.key}" if where else self.key
        return f"{where}: {self.message}" if where else self.message


class ConfigErrors(ConfigError):
    """Several configuration errors found in one pass; `errors` holds each, str() gives one line each.

    It is a ConfigError whose file, line, key and message are the first error's, so a caller that
    handles one error handles this too.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.message, file=first.file, line=first.line, key=first.key)

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


def config_error(errors: Sequence[ConfigError]) -> ConfigError:
    """One error as itself, several as ConfigErrors (flattened, so nesting never hides a line)."""
    flat: list[ConfigError] = []
    for error in errors:
        flat.extend(error.errors if isinstance(error, ConfigErrors) else (error,))
    return flat[0] if len(flat) == 1 else ConfigErrors(flat)


class NotAvailableError(UsageError):
    """A command or feature that this build does not provide yet."""


class PrivilegeError(UsageError):
    """An operation needs CAP_NET_ADMIN (root) and the process does not have it."""


class ProtocolError(DnsguardError):
    """A peer sent something that violates its protocol; local callers count and drop it."""


class FormError(ProtocolError):
    """A packet or message is malformed or truncated."""


class CryptoError(ProtocolError):
    """Authentication or decryption of a message failed."""


class NetworkError(DnsguardError):
    """An operating-system level network operation failed (socket, TUN, netlink, nftables)."""


class LabError(DnsguardError):
    """Building or using the network-namespace lab failed."""
