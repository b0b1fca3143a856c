"""Managed lists: the names allowed or blocked from the dashboard and `dnsguard allow` / `block`.

The daemon keeps them in two list files of its own, `managed-allow.txt` and `managed-block.txt`, in
`managed-lists.directory` (by default /var/lib/dnsguard, the daemon's state directory: /etc is read-only
under the shipped systemd units). At load they become two lists, `managed-allow` and `managed-block`,
selected by every group (a `default` group is added when the file has none), so a name allowed from a
log line passes for every client after the reload that follows the write.

A list is added only while its file holds a rule. An emptied file is not a source at all: the list
builder keeps the last good copy of a source that suddenly has no rules (a truncated download), which
would keep a removed name blocked.

The rules carry `$important` so that what the household decided wins over the lists' own rules:
an allowed name passes even where a blocklist's important rule names it.
"""

from __future__ import annotations

from pathlib import Path

from dnsguard.config.model import Config, GroupConfig, ListConfig
from dnsguard.errors import ConfigError

MANAGED_ALLOW = "managed-allow"
MANAGED_BLOCK = "managed-block"
MANAGED_LISTS = (MANAGED_ALLOW, MANAGED_BLOCK)
SCAN_LINES = 10_000
"""Lines read at load to find a first rule; a file written by the daemon has one on its second line."""


def managed_path(config: Config, list_name: str) -> Path | None:
    """The file of a managed list under this configuration; None when managed lists are off."""
    directory = config.managed_lists.directory
    if directory is None:
        return None
    return Path(config.base_dir) / directory / f"{list_name}.txt"


def has_rules(path: Path) -> bool:
    """True when the file exists and a line in its first SCAN_LINES is neither blank nor a comment.

    A file this process may not read counts as having rules: the daemon (another user) reads it, and a
    tool that only asks the daemon's API must still load the configuration.
    """
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle):
                text = line.strip()
                if text and text[0] not in "#!":
                    return True
                if number >= SCAN_LINES:
                    return False
    except FileNotFoundError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}", key="managed-lists.directory") from None
    return False


def apply_managed_lists(config: Config) -> None:
    """Add the managed lists that hold rules to the configuration, selected by every group."""
    for list_name in MANAGED_LISTS:
        if list_name in config.lists:
            raise ConfigError(
                f"{list_name!r} is the name of a list dnsguard manages: rename this list",
                key=f"lists.{list_name}",
            )
    for list_name in MANAGED_LISTS:
        path = managed_path(config, list_name)
        if path is None or not has_rules(path):
            continue
        allow = list_name == MANAGED_ALLOW
        config.lists[list_name] = ListConfig(
            sources=[str(path)],
            allow=allow,
            description="names " + ("allowed" if allow else "blocked") + " through the API",
        )
        groups = config.groups
        if "default" not in groups:
            groups["default"] = GroupConfig()
        for group in groups.values():
            names = group.allow if allow else group.block
            if list_name not in names:
                names.append(list_name)
