"""Build steps that pyproject.toml cannot declare: the shipped data and the commit, copied into the wheel.

Everything else about the package (metadata, dependencies, the man page and bash completion as data
files) is in pyproject.toml.

- The folders named by dnsguard.config.shipped.SHIPPED_FOLDERS are copied into the package as
  dnsguard/_data, keeping their layout, so that dnsguard finds them through importlib.resources
  wherever it is installed.
- dnsguard/_build_commit.py records the git commit of the checkout the wheel is built from (an sdist
  carries the one written when it was made). An editable install writes neither: it runs from the
  checkout, where the data is in place and git answers for the commit.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
COMMIT_FILE = Path("dnsguard") / "_build_commit.py"


def _constant(module: Path, name: str) -> object:
    """A literal constant of a dnsguard module, read without importing dnsguard (its dependencies
    are not installed in the build environment)."""
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            return ast.literal_eval(node.value)
    raise LookupError(f"{module}: no constant {name}")


SHIPPED = HERE / "dnsguard" / "config" / "shipped.py"
SHIPPED_FOLDERS = _constant(SHIPPED, "SHIPPED_FOLDERS")
PACKAGED_DATA = _constant(SHIPPED, "PACKAGED_DATA")


def _git(*argv: str) -> str | None:
    if not (HERE / ".git").exists():  # git would name the commit of whatever repository encloses this
        return None
    try:
        result = subprocess.run(
            ["git", "-C", str(HERE), *argv], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def _commit() -> str | None:
    # The same text as dnsguard.app.build_info.git_commit gives at run time from a checkout.
    head = _git("rev-parse", "--short=12", "HEAD")
    if head is None:
        return None
    changes = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if changes else head


def _write_commit(directory: Path) -> None:
    commit = _commit()
    if commit is not None:
        target = directory / COMMIT_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f'"""Written by setup.py when this package was built."""\n\nCOMMIT = "{commit}"\n')


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        package = Path(self.build_lib) / "dnsguard"
        data = package / str(PACKAGED_DATA)
        shutil.rmtree(data, ignore_errors=True)  # a stale copy from an earlier build
        for folder in SHIPPED_FOLDERS:
            shutil.copytree(
                HERE / str(folder), data / str(folder), ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        _write_commit(Path(self.build_lib))


class SdistWithCommit(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        _write_commit(Path(base_dir))


setup(cmdclass={"build_py": BuildWithData, "sdist": SdistWithCommit})
