"""The package around the code: shipped data, --version's commit, the manual page, bash completion, licence.

The wheel itself is built and installed in tests/slow/test_wheel_install.py; these tests are the fast
half: the generated manual page and completion script are current and correct, the data helper finds
the repository's files from a checkout, and --version never fails for want of git.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

from dnsguard import __version__
from dnsguard.app import build_info, completion, manpage
from dnsguard.cli import build_parser
from dnsguard.config import shipped

ROOT = Path(__file__).resolve().parents[2]
MAN_PAGE = ROOT / "deploy" / "man" / "dnsguard.8"
COMPLETION = ROOT / "deploy" / "bash-completion" / "dnsguard"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (bash deploy/install.sh --test installs it)")
    return path


# -- shipped data -------------------------------------------------------------------------------


def test_from_a_checkout_the_shipped_files_are_the_repository_folders() -> None:
    assert shipped.data_root() == ROOT
    assert shipped.shipped_path("blocklists/adult.txt") == ROOT / "blocklists" / "adult.txt"
    files = shipped.shipped_files()
    for expected in (
        "config/laptop.yaml",
        "blocklists/ads-trackers.txt",
        "deploy/systemd/dnsguard-server.service",
    ):
        assert expected in files
    assert all((ROOT / name).is_file() for name in files)
    assert {f"config/{path.name}" for path in (ROOT / "config").glob("*.yaml")} <= set(files)


def test_a_path_outside_the_shipped_folders_is_refused() -> None:
    with pytest.raises(ValueError, match="not under a shipped folder"):
        shipped.shipped_path("deploy/README.md")
    with pytest.raises(ValueError, match="not under a shipped folder"):
        shipped.shipped_path("dnsguard/cli.py")


def test_every_list_source_of_a_shipped_configuration_is_shipped_beside_it() -> None:
    """Relative sources resolve from the configuration's folder, so the layout must travel together."""
    files = set(shipped.shipped_files())
    checked = 0
    for name in (name for name in files if name.startswith("config/")):
        config = yaml.safe_load((ROOT / name).read_text())
        for list_name, spec in (config.get("lists") or {}).items():
            for source in spec.get("sources", []):
                if not isinstance(source, str) or "://" in source or "\n" in source:
                    continue  # URLs and inline rules
                resolved = os.path.normpath(os.path.join(os.path.dirname(name), source))
                assert resolved in files, f"{name}: lists.{list_name}: {source} is not shipped"
                checked += 1
    assert checked >= 3


def test_the_lab_and_the_services_catalogue_are_found_through_the_helper() -> None:
    from dnsguard.config.services import SHIPPED_CATALOGUES
    from dnsguard.lab import scenario

    assert shipped.shipped_path("blocklists") == scenario.BLOCKLISTS
    assert SHIPPED_CATALOGUES[0] == shipped.shipped_path("blocklists/services")


def test_a_missing_data_folder_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shipped, "__file__", str(tmp_path / "dnsguard" / "app" / "shipped.py"))
    assert not shipped.data_root().exists()  # named, so that a reader reports the missing path
    with pytest.raises(shipped.DnsguardError, match=r"shipped files .* are missing: .* has no config"):
        shipped.shipped_files()


def test_shipped_lists_every_file_by_absolute_path() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dnsguard.config.shipped"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == [str(ROOT / name) for name in shipped.shipped_files()]


# -- version and commit ---------------------------------------------------------------------------


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *argv], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


def test_from_a_checkout_version_names_the_checkouts_commit() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    head = git("rev-parse", "--short=12", "HEAD")
    assert build_info.version_text() in (
        f"dnsguard {__version__} (commit {head})",
        f"dnsguard {__version__} (commit {head}-dirty)",
    )


def test_a_built_commit_wins_over_git(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType(build_info.COMMIT_MODULE)
    module.COMMIT = "0123456789ab"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, build_info.COMMIT_MODULE, module)
    assert build_info.version_text() == f"dnsguard {__version__} (commit 0123456789ab)"


def test_without_git_the_commit_is_unknown_and_nothing_fails(tmp_path: Path) -> None:
    """PATH without git: `dnsguard --version` still answers, in one line, and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "dnsguard", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(tmp_path)},
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"dnsguard {__version__} (commit unknown)\n",
        "",
    )


def test_git_is_not_asked_outside_a_checkout(tmp_path: Path) -> None:
    """An unpacked package inside some other repository must not report that repository's commit."""
    assert build_info.git_commit(tmp_path) is None


def test_version_is_in_the_help() -> None:
    assert "--version" in build_parser().format_help()


# -- manual page --------------------------------------------------------------------------------


def test_the_committed_manual_page_is_the_generated_one() -> None:
    generated = manpage.generate(build_parser())
    assert MAN_PAGE.read_text() == generated, (
        "deploy/man/dnsguard.8 is stale: python -m dnsguard.app.manpage > deploy/man/dnsguard.8"
    )


def test_the_manual_page_has_every_command_and_option() -> None:
    parser = build_parser()
    page = MAN_PAGE.read_text()
    names = manpage.command_names(parser)
    assert {"check", "keygen", "up", "server"} <= set(names)
    for name in names:
        assert f'.SS "dnsguard {name}"' in page
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "FILES", "EXAMPLES"):
        assert f"\n.SH {section}\n" in page
    assert "/etc/dnsguard/dnsguard.yaml" in page
    assert "\\fB\\-\\-version\\fR" in page
    assert "\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fIFILE\\fR" in page


def test_a_command_added_to_the_parser_appears_in_the_page_and_completion() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    extra = subparsers.add_parser("frobnicate", help="a command the page was never told about")
    extra.add_argument("--level", choices=["low", "high"])
    nested = extra.add_subparsers(dest="what").add_parser("twice", help="a nested command")
    nested.add_argument("--count", type=int, default=2)
    subparsers.add_parser("quiet", description="a command added without help=", aliases=["hush"])
    page = manpage.generate(parser)
    assert '.SS "dnsguard frobnicate"' in page and '.SS "dnsguard frobnicate twice"' in page
    assert "A command the page was never told about." in page
    assert "{\\fBlow\\fR,\\fBhigh\\fR}" in page and "Default: 2." in page
    assert '.SS "dnsguard quiet"' in page and "A command added without help=." in page
    assert "dnsguard hush" not in page
    script = completion.generate(parser)
    assert "frobnicate" in script and "['dnsguard frobnicate --level']='low high'" in script


def render(page: Path) -> subprocess.CompletedProcess[str]:
    """man -l with --warnings=w, which man passes on as groff -ww: every warning groff has."""
    man = tool("man")
    return subprocess.run(
        [man, "--warnings=w", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "100", "LC_ALL": "C.UTF-8"},
        check=False,
    )


def test_man_renders_the_page_without_warnings() -> None:
    result = render(MAN_PAGE)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = re.sub(r".\x08", "", result.stdout)  # overstrike bold and underline
    assert "dnsguard - a DNS-filtering tunnel" in text
    for name in manpage.command_names(build_parser()):
        assert f"dnsguard {name}" in text


def test_the_render_check_reports_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.8"
    page.write_text(MAN_PAGE.read_text().replace(".SH FILES", ".SHX FILES").replace("\\fB", "\\q", 1))
    stderr = render(page).stderr
    assert "macro 'SHX' not defined" in stderr and "escape character ignored" in stderr


def test_groff_finds_nothing_to_warn_about() -> None:
    groff = tool("groff")
    result = subprocess.run(
        [groff, "-man", "-ww", "-z", "-Tutf8", str(MAN_PAGE)], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr) == (0, "")


# -- bash completion ------------------------------------------------------------------------------


def test_the_committed_completion_is_the_generated_one() -> None:
    assert COMPLETION.read_text() == completion.generate(build_parser()), (
        "deploy/bash-completion/dnsguard is stale: "
        "python -m dnsguard.app.completion > deploy/bash-completion/dnsguard"
    )


def complete(*words: str, cwd: Path = ROOT, script: Path = COMPLETION) -> list[str]:
    """What bash offers for the last of `words` (the word being typed), as a user pressing Tab."""
    bash = tool("bash")
    program = (
        'source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; '
        '_dnsguard dnsguard "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", program, "complete", str(script), *words],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return sorted(line for line in result.stdout.splitlines() if line)


def test_completion_offers_every_command() -> None:
    assert complete("dnsguard", "") == sorted(manpage.command_names(build_parser()))
    assert complete("dnsguard", "ch") == ["check"]
    assert complete("dnsguard", "--v") == ["--version"]


def test_completion_offers_the_options_of_the_command_typed() -> None:
    assert complete("dnsguard", "check", "--") == ["--config", "--help"]
    assert complete("dnsguard", "keygen", "--p") == ["--preshared"]
    assert complete("dnsguard", "queries", "-c", "x.yaml", "--re") == ["--result"]


def test_completion_offers_choices() -> None:
    assert complete("dnsguard", "queries", "--result", "b") == ["blocked"]
    assert complete("dnsguard", "lists", "") == ["update"]
    assert complete("dnsguard", "queries", "--limit", "") == []


def test_completion_offers_configuration_files_and_folders_for_c(tmp_path: Path) -> None:
    for name in ("home.yaml", "wg0.conf", "other.yml", "notes.txt", "key"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub").mkdir()
    assert complete("dnsguard", "check", "-c", "", cwd=tmp_path) == [
        "home.yaml",
        "other.yml",
        "sub",
        "wg0.conf",
    ]
    assert complete("dnsguard", "up", "--config", "h", cwd=tmp_path) == ["home.yaml"]
    assert complete("dnsguard", "check", "-c", "config/", cwd=ROOT) == [
        f"config/{path.name}" for path in sorted((ROOT / "config").glob("*.yaml"))
    ]


def test_completion_follows_nested_commands(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="dnsguard")
    commands = parser.add_subparsers(dest="command")
    allow = commands.add_parser("allow")
    allow.add_argument("-c", "--config", metavar="FILE")
    actions = allow.add_subparsers(dest="action")
    actions.add_parser("add").add_argument("--ttl")
    actions.add_parser("remove")
    script = tmp_path / "dnsguard"
    script.write_text(completion.generate(parser))
    assert complete("dnsguard", "allow", "", script=script) == ["add", "remove"]
    assert complete("dnsguard", "allow", "-c", "x.yaml", "add", "--", script=script) == ["--help", "--ttl"]


# -- licence and build configuration ---------------------------------------------------------------


def test_the_licence_is_declared_as_pep_639_asks() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert project["project"]["license-files"] == ["LICENSE"]
    # setuptools reads the SPDX expression and license-files from 77.0 on.
    assert "setuptools>=77" in project["build-system"]["requires"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "dnsguard developers" in text


def test_the_wheel_installs_the_page_and_completion_where_man_and_bash_look() -> None:
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    assert data_files["share/man/man8"] == ["deploy/man/dnsguard.8"]
    assert data_files["share/bash-completion/completions"] == ["deploy/bash-completion/dnsguard"]


def test_install_sh_installs_the_page_and_completion() -> None:
    script = (ROOT / "deploy" / "install.sh").read_text()
    assert 'deploy/man/dnsguard.8" /usr/local/share/man/man8/dnsguard.8' in script
    assert "/usr/local/share/bash-completion/completions/dnsguard" in script
