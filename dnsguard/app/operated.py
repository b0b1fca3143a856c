"""What the metrics, the API and the file watcher need from a daemon (`up`, `server` or `resolve`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dnsguard.app.observe import ReloadCounter, TunnelObserver
    from dnsguard.app.resolve import ResolverService
    from dnsguard.app.tunnel import TunnelShell
    from dnsguard.config import Config
    from dnsguard.lifecycle import Lifecycle


class Operated(Protocol):
    """A running daemon as the operations side sees it; every part is optional but the config."""

    @property
    def kind(self) -> str:
        """'client', 'server' or 'resolve'."""
        ...

    @property
    def config(self) -> Config: ...

    @property
    def config_path(self) -> str: ...

    @property
    def reloads(self) -> ReloadCounter: ...

    @property
    def tunnel_observer(self) -> TunnelObserver: ...

    @property
    def dns_service(self) -> ResolverService | None: ...

    @property
    def tunnel_shell(self) -> TunnelShell | None: ...

    @property
    def connection(self) -> Lifecycle | None:
        """The client's connection lifecycle; None for a server or a resolver."""
        ...

    async def reload(self) -> bool:
        """Re-read the configuration; False (and the last good one kept) when it is bad."""
        ...
