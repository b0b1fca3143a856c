"""What `dnsguard --version` prints: the version and the git commit the running code was built from.

A wheel built from a checkout carries the commit in a generated module (dnsguard/_build_commit.py,
written by setup.py's build step, never committed). Code run from a checkout asks git instead, so the
answer follows every new commit. Anywhere else, or without git, the commit is "unknown": a missing git
is an answer, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from dnsguard import __version__

COMMIT_MODULE = "dnsguard._build_commit"
GIT_TIMEOUT = 5.0
"""Seconds to wait for git; a hung git (a network file system) must not hang `--version`."""


def git_commit(checkout: Path) -> str | None:
    """The checkout's HEAD as 12 hex digits, with "-dirty" when tracked files differ from it.

    Asked only where `checkout/.git` exists: git would otherwise walk up to whatever repository
    encloses an unpacked package and name that one's commit.
    """
    if not (checkout / ".git").exists():
        return None
    try:
        head = _git(checkout, "rev-parse", "--short=12", "HEAD")
        changes = _git(checkout, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None  # no git, a repository git refuses (another owner), a timeout
    return f"{head}-dirty" if changes else head


def _git(checkout: Path, *argv: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(checkout), *argv],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT,
        check=True,
    )
    return result.stdout.strip()


def build_commit() -> str | None:
    """The commit recorded when this package was built, or None for code that was not built."""
    try:
        module = importlib.import_module(COMMIT_MODULE)
    except ImportError:
        return None
    commit = getattr(module, "COMMIT", None)
    return commit if isinstance(commit, str) and commit else None


def commit() -> str:
    return build_commit() or git_commit(Path(__file__).resolve().parents[2]) or "unknown"


def version_text() -> str:
    return f"dnsguard {__version__} (commit {commit()})"


class VersionAction(argparse.Action):
    """`--version`, computed when asked for: building the parser for every command runs no git."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the version and the git commit it was built from, then exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> NoReturn:
        print(version_text())
        parser.exit()
