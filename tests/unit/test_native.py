"""The compiled data paths are loaded only while their build matches the sources (dnsguard/native.py).

The real build (mypyc and gcc, about a minute) is tests/slow/test_native_build.py; these tests check
the decision on made-up builds: every reason to run from source, the finder, and the build's refusals.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnsguard import native, native_build
from dnsguard.native import MODULES, SHARED_LIBRARY, extension_suffix

PACKAGE = Path(native.__file__).resolve().parent


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the sources of MODULES, laid out as in the package, with no native build."""
    root = tmp_path / "dnsguard"
    for module in MODULES:
        source = native.module_file(PACKAGE, module)
        target = native.module_file(root, module)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


def fake_build(package: Path, *, suffix: str | None = None, leave_out: str = "") -> Path:
    """A native folder as native_build writes it, with empty files where the libraries go."""
    folder = package / native.FOLDER_NAME
    folder.mkdir()
    for name in (*MODULES, SHARED_LIBRARY):
        if name != leave_out:
            (folder / (name + extension_suffix())).write_bytes(b"")
    manifest = {"suffix": suffix or extension_suffix(), "sources": native.digests(package)}
    (folder / native.MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def test_a_build_that_matches_its_sources_names_every_compiled_file(package: Path) -> None:
    folder = fake_build(package)
    files, why = native.compiled_files(package)
    assert why == ""
    assert files == {name: folder / (name + extension_suffix()) for name in (*MODULES, SHARED_LIBRARY)}


def test_without_a_build_the_modules_run_from_source(package: Path) -> None:
    assert native.compiled_files(package) == (None, "not built (python -m dnsguard.native_build)")


def test_an_edited_source_turns_the_whole_build_off(package: Path) -> None:
    fake_build(package)
    cache = native.module_file(package, "dnsguard.dns.cache")
    cache.write_text(cache.read_text() + "\n# an edit\n")
    files, why = native.compiled_files(package)
    assert files is None and why.startswith("sources changed since the native build")


def test_a_deleted_source_turns_the_build_off(package: Path) -> None:
    fake_build(package)
    native.module_file(package, "dnsguard.dns.admission").unlink()
    assert native.compiled_files(package)[0] is None


def test_a_build_for_another_python_is_not_loaded(package: Path) -> None:
    fake_build(package, suffix=".cpython-312-x86_64-linux-gnu.so")
    files, why = native.compiled_files(package)
    assert files is None and "another Python" in why


def test_a_build_missing_a_library_is_not_loaded(package: Path) -> None:
    fake_build(package, leave_out=SHARED_LIBRARY)
    files, why = native.compiled_files(package)
    assert files is None and why == f"the native build lacks {SHARED_LIBRARY}"


@pytest.mark.parametrize("text", ["{", "[]", "{}", '{"suffix": 1, "sources": {}}', '{"suffix": ".so"}'])
def test_a_broken_manifest_is_not_loaded(package: Path, text: str) -> None:
    folder = fake_build(package)
    (folder / native.MANIFEST_NAME).write_text(text)
    files, why = native.compiled_files(package)
    assert files is None and why.startswith("the native build's manifest is unreadable")


def test_activate_puts_a_finder_for_the_compiled_files_first(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_build(package)
    monkeypatch.delenv("DNSGUARD_NATIVE", raising=False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(native, "state", native.state)
    native.activate(package)
    assert native.state == "compiled"
    finder = sys.meta_path[0]
    assert isinstance(finder, native.CompiledFinder)
    spec = finder.find_spec("dnsguard.dns.resolver", None)
    assert spec is not None and spec.origin == str(folder / ("dnsguard.dns.resolver" + extension_suffix()))
    assert finder.find_spec("dnsguard.dns.wire", None) is None  # not compiled: found as usual


def test_activate_leaves_the_import_system_alone_when_it_may_not_load(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_build(package)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(native, "state", native.state)
    before = list(sys.meta_path)
    monkeypatch.setenv("DNSGUARD_NATIVE", "0")
    native.activate(package)
    assert native.state == "interpreted: DNSGUARD_NATIVE=0" and sys.meta_path == before
    monkeypatch.delenv("DNSGUARD_NATIVE")
    native.module_file(package, "dnsguard.dns.resolver").write_text("# edited\n")
    native.activate(package)
    assert native.state.startswith("interpreted: sources changed") and sys.meta_path == before


def test_the_build_without_mypyc_says_so_and_keeps_the_earlier_build(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = fake_build(package)
    manifest = (folder / native.MANIFEST_NAME).read_text()
    monkeypatch.setitem(sys.modules, "mypyc", None)  # import mypyc raises ImportError
    with pytest.raises(native_build.BuildError, match="mypyc is not installed"):
        native_build.build(package)
    assert (folder / native.MANIFEST_NAME).read_text() == manifest


def test_the_build_command_reports_a_failure_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(package: Path = PACKAGE) -> Path:
        raise native_build.BuildError("gcc: not found")

    monkeypatch.setattr(native_build, "build", refuse)
    assert native_build.main([]) == 1
    assert capsys.readouterr().err == (
        "dnsguard.native_build: not built, the data paths run from source: gcc: not found\n"
    )
    assert native_build.main(["--bogus"]) == 2
    assert native_build.main(["--status"]) == 0
    assert capsys.readouterr().out.startswith("data paths (DNS, tunnel): ")


SOURCE_RUN_TESTS = (
    "test_dns_admission.py",
    "test_dns_cache.py",
    "test_dns_server.py",
    "test_resolver.py",
    "test_resolver_fast_path.py",
    "test_resolver_modifiers.py",
    "test_net_fake.py",
    "test_offload.py",
    "test_tun_offloads.py",
    "test_tunnel_shell.py",
    "test_udp_offloads.py",
    "test_wireguard_allowedips.py",
    "test_wireguard_codel.py",
    "test_wireguard_crypto.py",
    "test_wireguard_device.py",
    "test_wireguard_flow_queues.py",
    "test_wireguard_noise.py",
    "test_wireguard_replay.py",
)
"""The tests of the compiled modules (MODULES), run again from source by the test below."""


def test_every_test_a_compiled_build_skips_is_run_from_source() -> None:
    marked = {
        path.name
        for path in (PACKAGE.parent / "tests" / "unit").glob("test_*.py")
        if re.search(r"^@pytest\.mark\.source_only$", path.read_text(), re.MULTILINE)
    }
    assert marked and marked <= set(SOURCE_RUN_TESTS)


def from_source(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python argv...` in the checkout with DNSGUARD_NATIVE=0."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=PACKAGE.parent,
        env={**os.environ, "DNSGUARD_NATIVE": "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_compiled_modules_tests_pass_from_source_too() -> None:
    # CI runs the suite on the compiled build (deploy/install.sh builds before pytest), while a wheel, a
    # checkout without gcc and DNSGUARD_NATIVE=0 run these modules from source: both must hold.
    state = from_source("-c", "import dnsguard; print(dnsguard.native.state)")
    assert state.stdout.strip() == "interpreted: DNSGUARD_NATIVE=0", state.stderr[-2000:]
    tests = [PACKAGE.parent / "tests" / "unit" / name for name in SOURCE_RUN_TESTS]
    assert all(test.is_file() for test in tests)
    result = from_source("-m", "pytest", "-q", "-p", "no:cacheprovider", *map(str, tests))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
