"""Builds the compiled data paths that dnsguard/native.py loads (run by deploy/install.sh).

    .venv/bin/python -m dnsguard.native_build            compile, replacing an earlier build
    .venv/bin/python -m dnsguard.native_build --status   say whether this checkout runs compiled

Exits 1 with the reason where mypyc, gcc or the Python headers are missing or the compiler fails;
dnsguard then runs from source, as it does without a build.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from dnsguard import native
from dnsguard.errors import UsageError
from dnsguard.native import (
    FOLDER_NAME,
    GROUP,
    MANIFEST_NAME,
    MODULES,
    PACKAGE,
    SHARED_LIBRARY,
    digests,
    extension_suffix,
    module_file,
)

BUILD_TIMEOUT: Final = 600.0
"""Seconds the compiler may take (about 30 on a 2-core machine)."""


class BuildError(UsageError):
    """The native build could not be made; the message says why."""


_SETUP: Final = """\
from setuptools import setup
from mypyc.build import mypycify

setup(
    name="dnsguard-native",
    ext_modules=mypycify({paths!r}, group_name={group!r}, opt_level="3"),
)
"""


def build(package: Path = PACKAGE) -> Path:
    """Compile MODULES from `package`'s sources into `package`/_native (replacing any earlier build in
    one rename); returns the folder. Raises BuildError, leaving an earlier build as it was."""
    try:
        import mypyc  # noqa: F401
    except ImportError:
        raise BuildError(
            "mypyc is not installed (it comes with mypy: pip install 'dnsguard[native]')"
        ) from None
    folder = package / FOLDER_NAME
    with tempfile.TemporaryDirectory(prefix="dnsguard-native-") as scratch:
        work = Path(scratch)
        # A copy of the package: the checkout's pyproject.toml is not mypyc's business, and the digests
        # are of exactly the text compiled, whatever happens to the checkout meanwhile.
        shutil.copytree(
            package,
            work / "dnsguard",
            ignore=shutil.ignore_patterns("__pycache__", "*.so", FOLDER_NAME, "_data"),
        )
        # The type stubs of dependencies (types-PyYAML) come with the test extra only; without them a
        # dependency's types are Any to the compiler, as they are at run time anyway.
        paths = ["--ignore-missing-imports"]
        paths += [str(module_file(Path("dnsguard"), module)) for module in MODULES]
        (work / "setup.py").write_text(_SETUP.format(paths=paths, group=GROUP))
        try:
            result = subprocess.run(
                [sys.executable, "setup.py", "build_ext", "--inplace"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"the compiler could not run: {exc}") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            errors = [line for line in output if "error" in line.lower()] or output
            raise BuildError("mypyc failed: " + " | ".join(errors[-5:])[-1500:])
        staged = package / (FOLDER_NAME + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir()
        for name in (*MODULES, SHARED_LIBRARY):
            built = module_file(work / "dnsguard", name, extension_suffix())
            if not built.is_file():
                shutil.rmtree(staged, ignore_errors=True)
                raise BuildError(f"mypyc made no {built.name}")
            shutil.copyfile(built, staged / (name + extension_suffix()))
        manifest = {"suffix": extension_suffix(), "sources": digests(work / "dnsguard")}
        (staged / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    old = package / (FOLDER_NAME + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staged.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--status"]:
        print(f"data paths (DNS, tunnel): {native.state}")
        return 0
    if args:
        print("usage: python -m dnsguard.native_build [--status]", file=sys.stderr)
        return 2
    try:
        folder = build()
    except BuildError as exc:
        print(f"dnsguard.native_build: not built, the data paths run from source: {exc}", file=sys.stderr)
        return 1
    print(f"dnsguard.native_build: {len(MODULES)} modules compiled into {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
