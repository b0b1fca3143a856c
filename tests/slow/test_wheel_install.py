"""The release path end to end: build the sdist and the wheel from it, install it into a new venv outside
the checkout, and use it there as an administrator would.

Slow (about a minute: two isolated builds and a venv with dnsguard's dependencies), so it sits outside
tests/unit; `pytest` (CI) runs it, `pytest tests/unit` does not. It needs no root.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from dnsguard import __version__
from dnsguard.app import build_info
from dnsguard.config import shipped

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 300


@dataclass(frozen=True)
class Installed:
    sdist: Path
    wheel: Path
    venv: Path
    elsewhere: Path
    """A folder outside the checkout to run commands from."""
    commit: str
    """What --version must name: the checkout's commit when the build ran."""

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        return subprocess.run(
            [str(self.venv / "bin" / argv[0]), *argv[1:]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            cwd=self.elsewhere,
            env=env,
            check=False,
        )


def step(*argv: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, timeout=STEP_TIMEOUT, cwd=cwd, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stdout[-3000:]}{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    pytest.importorskip("build", reason="the [test] extra installs build (bash deploy/install.sh --test)")
    base = tmp_path_factory.mktemp("wheel")
    dist, venv, elsewhere = base / "dist", base / "venv", base / "elsewhere"
    elsewhere.mkdir()
    commit = build_info.git_commit(ROOT) or "unknown"
    # `python -m build` makes the sdist, then the wheel from the unpacked sdist: the wheel can only
    # carry what the sdist does, so a file missing from MANIFEST.in fails here.
    step(sys.executable, "-m", "build", "--outdir", dist, ROOT, cwd=ROOT)
    (sdist,) = dist.glob("dnsguard-*.tar.gz")
    (wheel,) = dist.glob("dnsguard-*.whl")
    step(sys.executable, "-m", "venv", venv, cwd=elsewhere)
    step(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        wheel,
        cwd=elsewhere,
    )
    return Installed(sdist, wheel, venv, elsewhere, commit)


def test_the_installed_package_is_not_the_checkout(installed: Installed) -> None:
    result = installed.run("python", "-c", "import dnsguard; print(dnsguard.__file__)")
    location = Path(result.stdout.strip())
    assert location.is_relative_to(installed.venv), result.stdout + result.stderr
    assert not location.is_relative_to(ROOT)


def test_version_names_the_commit_the_wheel_was_built_from(installed: Installed) -> None:
    result = installed.run("dnsguard", "--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"dnsguard {__version__} (commit {installed.commit})\n",
        "",
    )
    if installed.commit != "unknown":  # the sdist carries the commit to a build that has no .git
        with tarfile.open(installed.sdist) as sdist:
            names = sdist.getnames()
            member = next(name for name in names if name.endswith("dnsguard/_build_commit.py"))
            recorded = sdist.extractfile(member)
            assert recorded is not None and f'COMMIT = "{installed.commit}"' in recorded.read().decode()


def test_the_shipped_data_is_installed_in_the_package(installed: Installed) -> None:
    result = installed.run("python", "-m", "dnsguard.config.shipped")
    assert result.returncode == 0, result.stderr
    listed = [Path(line) for line in result.stdout.splitlines()]
    site = next(installed.venv.glob("lib/python3*/site-packages"))
    root = site / "dnsguard" / shipped.PACKAGED_DATA
    assert all(path.is_relative_to(root) and path.is_file() for path in listed)
    assert [path.relative_to(root).as_posix() for path in listed] == shipped.shipped_files()
    for name in shipped.shipped_files():
        assert (root / name).read_bytes() == (ROOT / name).read_bytes(), name
    print(f"{len(listed)} shipped files under {root}")


@pytest.mark.parametrize("name", sorted(path.name for path in (ROOT / "config").glob("*.yaml")))
def test_each_shipped_configuration_passes_check_where_it_is_installed(
    installed: Installed, name: str
) -> None:
    site = next(installed.venv.glob("lib/python3*/site-packages"))
    data = site / "dnsguard" / shipped.PACKAGED_DATA
    result = installed.run("dnsguard", "check", "-c", str(data / "config" / name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{data / 'config' / name}: configuration is valid" in result.stdout
    # Its relative list sources (../blocklists/...) were found beside it, inside the package.
    assert f"{data / 'blocklists'}/" in result.stdout


def test_keygen_and_pubkey_work(installed: Installed) -> None:
    private = installed.run("dnsguard", "keygen")
    assert private.returncode == 0, private.stderr
    assert len(base64.b64decode(private.stdout.strip(), validate=True)) == 32
    public = installed.run("dnsguard", "pubkey", stdin=private.stdout)
    assert public.returncode == 0, public.stderr
    assert len(base64.b64decode(public.stdout.strip(), validate=True)) == 32
    assert public.stdout != private.stdout


def test_the_manual_page_completion_and_licence_are_installed(installed: Installed) -> None:
    page = installed.venv / "share" / "man" / "man8" / "dnsguard.8"
    script = installed.venv / "share" / "bash-completion" / "completions" / "dnsguard"
    assert page.read_text() == (ROOT / "deploy" / "man" / "dnsguard.8").read_text()
    assert script.read_text() == (ROOT / "deploy" / "bash-completion" / "dnsguard").read_text()
    (licence,) = installed.venv.glob("lib/python3*/site-packages/dnsguard-*.dist-info/licenses/LICENSE")
    assert licence.read_text() == (ROOT / "LICENSE").read_text()
    metadata = installed.run(
        "python", "-c", "from importlib.metadata import metadata; print(metadata('dnsguard'))"
    )
    assert "License-Expression: MIT" in metadata.stdout


def test_the_demo_runs_from_the_installed_package(installed: Installed) -> None:
    """`dnsguard demo` reads the sample lists at run time: from the package, not from a checkout."""
    if os.geteuid() != 0:
        pytest.skip("the demo builds network namespaces: root only")
    result = installed.run("dnsguard", "demo")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "blocked (ads list)" in result.stdout
    assert "adult blocked" in result.stdout
    assert "lab torn down" in result.stdout
