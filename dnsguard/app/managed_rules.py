"""Writing the managed lists: allow, block or remove one name (`POST /api/rules`, `dnsguard allow`).

The daemon is the only writer (the CLI and the dashboard go through its API), so a write is a plain
read-modify-replace: the new text goes to a temporary file in the same directory, is flushed to disk,
and replaces the old one with rename(2), which the list builder and the file watcher see whole or not
at all. Lines the daemon did not write (comments, rules added by hand) are kept as they are.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dnsguard.config.managed import MANAGED_ALLOW, MANAGED_BLOCK, managed_path
from dnsguard.config.model import Config
from dnsguard.errors import DnsguardError
from dnsguard.filter.rules import folded_name, name_problem

Action = Literal["allow", "block", "remove"]
ACTIONS: tuple[Action, ...] = ("allow", "block", "remove")
MAX_ENTRIES = 10_000
"""Names one managed list holds at most: every write rewrites the file and every reload parses it."""
HEADER = {
    MANAGED_ALLOW: "# Names allowed for every group, written by dnsguard (dashboard, `dnsguard allow`).\n",
    MANAGED_BLOCK: "# Names blocked for every group, written by dnsguard (dashboard, `dnsguard block`).\n",
}


class RequestRefused(DnsguardError):
    """A dashboard request (a rule, a pause) that cannot be applied: `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def rule_line(list_name: str, name: str) -> str:
    """The line a managed list holds for `name` (the name and its subdomains, `$important`)."""
    prefix = "@@" if list_name == MANAGED_ALLOW else ""
    return f"{prefix}||{name}^$important"


def checked_name(text: object) -> str:
    """The canonical form of a name to allow or block; RequestRefused 400 saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise RequestRefused(400, 'give "name": a domain name such as ads.example.com')
    name = folded_name(text)
    problem = "not a valid internationalised name" if name is None else name_problem(name)
    if name is None or problem is not None:
        raise RequestRefused(400, f"{text.strip()[:260]!r} is not a domain name ({problem})")
    if "." not in name:
        raise RequestRefused(400, f"{name!r} is a single label: give a full domain name")
    return name


@dataclass(frozen=True)
class RuleChange:
    name: str
    action: Action
    changed: bool
    """False when the lists already said so (nothing written, no reload needed)."""


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    except FileNotFoundError:
        return []


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.writelines(line if line.endswith("\n") else line + "\n" for line in lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o640)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def managed_entries(config: Config) -> dict[str, list[str]]:
    """The names each managed list holds through the daemon's own lines, in file order."""
    found: dict[str, list[str]] = {}
    for list_name in (MANAGED_ALLOW, MANAGED_BLOCK):
        path = managed_path(config, list_name)
        names: list[str] = []
        if path is not None:
            prefix = "@@||" if list_name == MANAGED_ALLOW else "||"
            for line in _read_lines(path):
                text = line.strip()
                if text.startswith(prefix) and text.endswith("^$important"):
                    names.append(text[len(prefix) : -len("^$important")])
        found[list_name] = names
    return found


def change_rule(config: Config, action: Action, name: str) -> RuleChange:
    """Allow, block or remove `name` in the managed lists: it ends up in at most one of them."""
    want = {"allow": MANAGED_ALLOW, "block": MANAGED_BLOCK, "remove": None}[action]
    changed = False
    for list_name in (MANAGED_ALLOW, MANAGED_BLOCK):
        path = managed_path(config, list_name)
        if path is None:
            raise RequestRefused(409, "managed lists are off (managed-lists.directory is null)")
        line = rule_line(list_name, name)
        try:
            lines = _read_lines(path)
            kept = [text for text in lines if text.strip() != line]
            if list_name == want:
                if len(kept) != len(lines):
                    continue  # already there
                if sum(1 for text in kept if text.strip().endswith("^$important")) >= MAX_ENTRIES:
                    raise RequestRefused(
                        507, f"{path} holds {MAX_ENTRIES} names already: remove some, or use a list file"
                    )
                _write(path, (kept or [HEADER[list_name]]) + [line + "\n"])
                changed = True
            elif len(kept) != len(lines):
                _write(path, kept)
                changed = True
        except OSError as exc:
            raise RequestRefused(500, f"{path}: {exc.strerror or exc}") from None
    return RuleChange(name, action, changed)
