"""The data paths compiled to C with mypyc, used only while they match the sources they were built from.

    .venv/bin/python -m dnsguard.native_build            (deploy/install.sh runs it)
    .venv/bin/python -m dnsguard.native_build --status

The build (dnsguard/native_build.py) compiles MODULES with mypyc into dnsguard/_native/, beside a
manifest of the SHA-256 of each source it compiled: the DNS path (the UDP listener with its recvmmsg
and sendmmsg batches, the resolver's answer path, its cache and its admission) and the tunnel's (the
shell, the WireGuard device with its peers, sessions, replay windows, allowed IPs and queues, its
handshakes and cookies, the TUN and the UDP socket with their offloads). The same code then runs with
fewer interpreter steps per query and per packet (bench/dns_instructions.py and
bench/tunnel_instructions.py count them). It needs mypy (the `native` extra), gcc and the Python
headers; where any is missing or the compiler fails, it says why and dnsguard runs from source as
before.

dnsguard's __init__ calls `activate()` on every start: when the manifest names the running
interpreter's extension suffix and every module's source still has the digest it was compiled from, a
finder at the head of sys.meta_path loads those modules, and mypyc's shared library, from
dnsguard/_native/. Otherwise none is loaded from there: an edited resolver.py is never shadowed by a
build of its old text. All or none, because the compiled modules call one another directly. The
folder is never in a wheel (it has no __init__.py), so an installed wheel runs from source.

mypyc checks argument and return types at run time where plain Python does not: an annotation
narrower than what arrives (a sender typed (host, port) that is an IPv6 4-tuple) raises TypeError
compiled and passes unnoticed from source. The UDP listener counts such a fault as an internal error,
per query and per wake-up, and reads on; the tests run compiled in CI (deploy/install.sh builds first),
with both address families, and bench/fuzz_dns.py throws malformed input at a compiled daemon.
A compiled class's methods cannot be replaced on an instance, and a Final constant is bound when it is
built: the few tests that do either are marked source_only, skipped on a compiled build and run from
source by tests/unit/test_native.py.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final

MODULES: Final = (
    "dnsguard.dns.admission",
    "dnsguard.dns.cache",
    "dnsguard.dns.resolver",
    "dnsguard.net.dns_listeners",
    "dnsguard.net.mmsg",
    "dnsguard.app.tunnel",
    "dnsguard.wireguard.device",
    "dnsguard.wireguard.peer",
    "dnsguard.wireguard.session",
    "dnsguard.wireguard.replay",
    "dnsguard.wireguard.allowedips",
    "dnsguard.wireguard.flow_queues",
    "dnsguard.wireguard.codel",
    "dnsguard.wireguard.noise",
    "dnsguard.wireguard.cookie",
    "dnsguard.wireguard.crypto",
    "dnsguard.net.udp",
    "dnsguard.net.tun",
    "dnsguard.net.offload",
)
GROUP: Final = "dnsguard._native"
"""mypyc's group name: its shared library, which every compiled module imports, is GROUP + '__mypyc'."""
SHARED_LIBRARY: Final = GROUP + "__mypyc"
PACKAGE: Final = Path(__file__).resolve().parent
FOLDER_NAME: Final = "_native"
MANIFEST_NAME: Final = "manifest.json"

state = "interpreted: not built (python -m dnsguard.native_build)"
"""What activate() found: 'compiled' or 'interpreted: <why>'."""


REBUILD: Final = "rebuild: python -m dnsguard.native_build"


def module_file(package: Path, module: str, suffix: str = ".py") -> Path:
    """Where `module` (a dotted name under dnsguard) lies in the package folder `package`: its source,
    or with an extension's `suffix` its compiled file as the compiler lays it out."""
    parts = module.split(".")[1:]
    return package.joinpath(*parts[:-1], parts[-1] + suffix)


def digests(package: Path) -> dict[str, str]:
    """SHA-256 of each of MODULES' sources in `package` (a module whose file is missing is left out)."""
    found: dict[str, str] = {}
    for module in MODULES:
        try:
            found[module] = hashlib.sha256(module_file(package, module).read_bytes()).hexdigest()
        except OSError:
            continue
    return found


def extension_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


class CompiledFinder(importlib.abc.MetaPathFinder):
    """Finds each compiled module (and the shared library) at its file in the native folder."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def compiled_files(package: Path) -> tuple[dict[str, Path] | None, str]:
    """The compiled module files of `package`'s native build, if they may be used, and why not if not."""
    folder = package / FOLDER_NAME
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except FileNotFoundError:
        return None, "not built (python -m dnsguard.native_build)"
    except (OSError, ValueError) as exc:
        return None, f"the native build's manifest is unreadable ({exc})"
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("suffix"), str)
        and isinstance(manifest.get("sources"), dict)
    ):
        return None, f"the native build's manifest is unreadable ({REBUILD})"
    if manifest["suffix"] != extension_suffix():
        return None, f"the native build is for another Python ({REBUILD})"
    if manifest["sources"] != digests(package):
        return None, f"sources changed since the native build ({REBUILD})"
    files = {name: folder / (name + extension_suffix()) for name in (*MODULES, SHARED_LIBRARY)}
    missing = [name for name, file in files.items() if not file.is_file()]
    if missing:
        return None, f"the native build lacks {', '.join(missing)}"
    return files, ""


def activate(package: Path = PACKAGE) -> None:
    """Load MODULES compiled from now on if the native build matches their sources (see the module
    docstring); else leave them to run from source. dnsguard/__init__.py calls it, before any of them
    can be imported."""
    global state
    if os.environ.get("DNSGUARD_NATIVE", "") == "0":
        state = "interpreted: DNSGUARD_NATIVE=0"
        return
    files, why = compiled_files(package)
    if files is None:
        state = f"interpreted: {why}"
        return
    sys.meta_path.insert(0, CompiledFinder(files))
    state = "compiled"
