"""List files are read as bounded regular files, and what is wrong in them is quoted short.

A list path is configuration: a FIFO, a device or a directory there must be refused at once with a
clear error (not block `check` and every reload, nor read /dev/zero until memory runs out), and a
megabyte-long bad line must not be echoed whole into reports and logs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dnsguard.app.lists import build_sync
from dnsguard.config.loader import ByteSize
from dnsguard.config.model import Config, ListConfig, ListsLoadingConfig
from dnsguard.errors import DnsguardError
from dnsguard.filter import ListSource, compile_matcher, parse_file, parse_text
from dnsguard.filter.lists import DEFAULT_MAX_FILE_SIZE, ListFileError, read_list_file
from dnsguard.filter.rules import EXCERPT_CHARS, Outcome, parse_line

MIB = 1024 * 1024


def refusal(path: Path | str, max_size: int = DEFAULT_MAX_FILE_SIZE) -> str:
    with pytest.raises(ListFileError) as caught:
        read_list_file(path, max_size)
    assert isinstance(caught.value, DnsguardError)
    assert str(caught.value) == f"{path}: {caught.value.reason}"
    return caught.value.reason


@pytest.mark.timeout(60)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "ads.txt"
    os.mkfifo(fifo)
    assert refusal(fifo) == "a FIFO, not a regular file"
    with pytest.raises(ListFileError, match="FIFO"):
        parse_file(fifo)


@pytest.mark.timeout(60)
def test_an_endless_device_is_refused_before_reading() -> None:
    assert refusal("/dev/zero") == "a character device, not a regular file"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path) == "a directory, not a regular file"


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path / "missing.txt") == "cannot open: No such file or directory"


def test_a_file_over_the_size_limit_is_refused_and_one_at_the_limit_read(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_bytes(b"a.example\n" * 100)
    assert refusal(path, 999) == "1000 bytes, over the 999-byte limit (loading.max-size)"
    assert read_list_file(path, 1000) == b"a.example\n" * 100


def test_files_of_every_size_are_read_whole(tmp_path: Path) -> None:
    for size in (0, 1, 65_535, 65_536, 65_537, 3 * MIB + 7):
        path = tmp_path / f"f{size}.txt"
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        path.write_bytes(data)
        assert read_list_file(path) == data


def test_a_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("||ads.example^\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    assert parse_file(link).rule_count == 1


def test_bad_sources_are_reported_and_the_good_ones_still_load(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("||ads.example^\n")
    (tmp_path / "big.txt").write_bytes(b"x.example\n" * 200)
    os.mkfifo(tmp_path / "fifo.txt")
    (tmp_path / "dir").mkdir()
    sources = ["good.txt", "big.txt", "fifo.txt", "dir", "missing.txt", "/dev/zero"]
    config = Config(
        lists={"ads": ListConfig(sources=sources)},
        loading=ListsLoadingConfig(max_size=ByteSize(1024)),
    )
    config.base_dir = str(tmp_path)
    built = build_sync(config)
    outcome = {Path(r.location).name: (r.status, r.error) for r in built.sources}
    assert outcome == {
        "good.txt": ("ok", None),
        "big.txt": ("error", "2000 bytes, over the 1024-byte limit (loading.max-size)"),
        "fifo.txt": ("error", "a FIFO, not a regular file"),
        "dir": ("error", "a directory, not a regular file"),
        "missing.txt": ("error", "cannot open: No such file or directory"),
        "zero": ("error", "a character device, not a regular file"),
    }
    assert built.matcher.match("www.ads.example").blocked


# Long lines are quoted short.


def test_a_megabyte_malformed_line_is_quoted_short_with_its_size() -> None:
    line = "bad!" + "x" * (MIB - 4)
    parsed = parse_text(f"||ok.example^\n{line}\n", ListSource("l", "l.txt"))
    assert parsed.report.counts == {"rule": 1, "malformed": 1}
    (issue,) = parsed.report.issues
    assert issue.text == line[:EXCERPT_CHARS]
    assert issue.size == MIB
    assert str(issue) == f"l.txt:2: invalid character '!' in name: {line[:EXCERPT_CHARS]!r}…({MIB} bytes)"
    assert len(parsed.report.summary()) < 200


def test_a_short_malformed_line_is_quoted_whole() -> None:
    parsed = parse_text("bad!name\n", ListSource("l", "l.txt"))
    assert [str(issue) for issue in parsed.report.issues] == [
        "l.txt:1: invalid character '!' in name: 'bad!name'"
    ]


def test_a_long_line_of_bad_names_gives_a_short_reason() -> None:
    names = " ".join(f"bad!{i}.example" for i in range(50_000))
    result = parse_line(f"0.0.0.0 {names}")
    assert result.outcome is Outcome.MALFORMED
    assert result.reason.endswith("; and 49997 more")
    assert len(result.reason) < 200


def test_a_long_bad_token_is_quoted_short_in_the_reason() -> None:
    token = "ok.example." + "y" * 10_000 + "!"
    result = parse_line(f"0.0.0.0 good.example {token}")
    assert result.outcome is Outcome.RULE
    assert result.reason == f"{token[:EXCERPT_CHARS]!r}…({len(token)} bytes): invalid character '!' in name"


def test_a_long_unknown_modifier_and_dnsmasq_option_are_quoted_short() -> None:
    modifier = "m" * 5000
    assert len(parse_line(f"||ads.example^${modifier}").reason) < 200
    assert len(parse_line("x" * 5000 + "=/ads.example/").reason) < 200


def test_explain_reads_the_rule_line_again_and_survives_a_source_turned_fifo(tmp_path: Path) -> None:
    path = tmp_path / "l.txt"
    path.write_text("||ads.example^\n")
    matcher = compile_matcher([parse_file(path)])
    verdict = matcher.match("ads.example")
    assert matcher.source_line(verdict) == "||ads.example^"
    path.unlink()
    os.mkfifo(path)
    assert matcher.source_line(verdict) is None
