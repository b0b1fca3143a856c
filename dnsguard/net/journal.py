"""The client's record of what it changed in its network namespace, written before each change.

Leaving a namespace as it was found needs the previous value of every sysctl and the exact rules,
routes and nftables tables that were added; deleting "whatever looks like ours" cannot restore a
sysctl and may delete what another program added. So every change is appended here *before* it
is made: a process killed between the record and the change leaves an entry whose undo finds
nothing to delete, never a change without an entry. Undo runs in reverse order, so a key changed
twice ends at its first recorded value.

The file is keyed by the network namespace (the inode of /proc/self/ns/net) as well as the
interface: /run is shared by every namespace on the machine, and a client in one namespace must
never read, stop or roll back a client in another. It also carries the running client's status
(`dnsguard status` reads it), so there is one file per client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dnsguard.errors import DnsguardError, NetworkError
from dnsguard.net import firewall, routing

log = logging.getLogger(__name__)

RUN_DIR = Path(os.environ.get("DNSGUARD_RUN_DIR", "/run/dnsguard"))
"""Where the daemons keep their state files."""

Change = dict[str, Any]
"""One recorded change: {"kind": "sysctl" | "nft-table" | "rule" | "route", ...its attributes}."""


def namespace_id(pid: int | str = "self") -> int | None:
    """The identity of a process's network namespace (inode of its ns/net link), None if unreadable."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def state_file(run_dir: Path, interface: str, namespace: int | None = None) -> Path:
    """Where the client for `interface` in a namespace (default: ours) keeps its state."""
    if namespace is None:
        namespace = namespace_id() or 0
    return run_dir / f"{interface}.netns-{namespace}.json"


def client_alive(pid: int, namespace: int) -> bool:
    """True when `pid` is a dnsguard process in `namespace` (not a stranger that reused the pid)."""
    if namespace_id(pid) != namespace:
        return False
    try:
        return b"dnsguard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Journal:
    """The state file of one client: its pid, its status, and every change it has made, in order."""

    def __init__(self, path: Path, interface: str) -> None:
        self.path = path
        self.interface = interface
        self.pid = os.getpid()
        self.namespace = namespace_id() or 0
        self.changes: list[Change] = []
        self.status: dict[str, object] = {}

    @classmethod
    def for_interface(cls, run_dir: Path, interface: str) -> Journal:
        return cls(state_file(run_dir, interface), interface)

    # -- recording ------------------------------------------------------------------------

    def record(self, change: Change) -> None:
        """Append a change and write the file; call before making the change."""
        self.changes.append(dict(change))
        self.save()

    def update_status(self, status: Mapping[str, object]) -> None:
        self.status = dict(status)
        with contextlib.suppress(NetworkError):
            self.save()

    def save(self) -> None:
        document = {
            **self.status,
            "pid": self.pid,
            "netns": self.namespace,
            "interface": self.interface,
            "changes": self.changes,
        }
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(document))
            temporary.replace(self.path)
        except OSError as exc:
            # Not recording is not an option: a change we could not record is one we could not undo.
            raise NetworkError(f"cannot write the state file {self.path}: {exc}") from exc

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    # -- taking over from a previous run ------------------------------------------------

    def claim(self) -> list[Change]:
        """Take this namespace's state file for this interface.

        Returns the changes of a previous run whose process is gone (to be rolled back before this
        run changes anything); raises when a client for the interface still runs here.
        """
        previous = read_state(self.path)
        if previous is None:
            self.save()
            return []
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != self.pid and client_alive(pid, self.namespace):
            raise DnsguardError(
                f"a client for {self.interface} already runs in this network namespace (pid {pid})"
            )
        changes = previous.get("changes")
        stale = [c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else []
        # The stale changes stay in the file until they are undone: a crash during the roll-back
        # leaves them for the next start to finish.
        self.changes = stale
        self.save()
        return stale


def read_state(path: Path) -> dict[str, object] | None:
    """A state file's contents, or None when it is missing or unreadable."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


async def undo_change(change: Change) -> None:
    """Take back one recorded change; raises NetworkError if it cannot be."""
    if change.get("kind") == "nft-table":
        firewall.delete_table(str(change["family"]), str(change["name"]))
    else:
        await routing.undo(change)


async def roll_back(journal: Journal) -> list[str]:
    """Undo the journal's changes, newest first, and drop each from the file once undone.

    Every change is tried even when an earlier one fails; the ones that fail stay in the file
    (for `dnsguard down` or the next start to retry) and their errors are returned.
    """
    errors: list[str] = []
    remaining: list[Change] = []
    for change in reversed(list(journal.changes)):
        try:
            await undo_change(change)
        except (NetworkError, OSError, KeyError) as exc:
            errors.append(str(exc))
            remaining.append(change)
    journal.changes = list(reversed(remaining))
    with contextlib.suppress(NetworkError):
        journal.save()
    return errors
