"""The files dnsguard ships beside its code: sample configurations, sample lists and the services
catalogue, systemd units.

In a checkout they are the repository's own folders. A wheel carries copies of the same folders, in the
same relative layout, inside the package (dnsguard/_data, written by setup.py's build step). Keeping the
layout is what makes a sample configuration's relative list paths (`../blocklists/adult.txt`) resolve
from wherever the package is installed. Every run-time read of a shipped file goes through
`shipped_path`, so no code assumes that it runs from a checkout. It lives with the configuration
because the configuration is what names these files (the services catalogue, the sample lists).

`python -m dnsguard.config.shipped` prints the absolute path of every shipped file.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

from dnsguard.errors import DnsguardError

SHIPPED_FOLDERS = ("config", "blocklists", "deploy/systemd")
"""Folders of the repository that a wheel carries (setup.py reads this tuple from this file)."""

PACKAGED_DATA = "_data"
"""Where, inside the installed package, the build puts the copies of SHIPPED_FOLDERS."""


def data_root() -> Path:
    """The folder that holds SHIPPED_FOLDERS: the package's data in a wheel, else the checkout's root.

    Never raises, so that importing a module that names a shipped path cannot fail: when neither
    exists (a damaged install) the package's location is returned, and whoever reads a file there
    reports that path as missing, as `shipped_files` does.
    """
    packaged = files("dnsguard").joinpath(PACKAGED_DATA)
    # Wheels install as plain files, so the resource is a real folder; a zip import would not be.
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if all((checkout / folder).is_dir() for folder in SHIPPED_FOLDERS):
        return checkout
    return Path(str(packaged))


def shipped_path(relative: str) -> Path:
    """The absolute path of a shipped file or folder, named as in the repository (`blocklists/adult.txt`)."""
    if not any(relative == folder or relative.startswith(f"{folder}/") for folder in SHIPPED_FOLDERS):
        raise ValueError(f"{relative} is not under a shipped folder {SHIPPED_FOLDERS}")
    return data_root() / relative


def shipped_files() -> list[str]:
    """Every shipped file, relative to the data root, sorted: what a wheel must carry."""
    root = data_root()
    missing = [folder for folder in SHIPPED_FOLDERS if not (root / folder).is_dir()]
    if missing:
        raise DnsguardError(
            f"the shipped files (sample configurations, lists, units) are missing: {root} has no "
            f"{', '.join(missing)}; reinstall dnsguard from its wheel"
        )
    found: list[str] = []
    for folder in SHIPPED_FOLDERS:
        for path in (root / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def main() -> int:
    try:
        root = data_root()
        for relative in shipped_files():
            print(root / relative)
    except DnsguardError as exc:
        print(f"dnsguard: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
