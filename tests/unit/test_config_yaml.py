"""The YAML layer does bounded work: safe tags, capped depth, aliases and size, and no duplicate keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsguard.config import document, load_config
from dnsguard.config.document import MAX_DEPTH, MAX_FILE_SIZE, MAX_VALUES, Composer
from dnsguard.errors import ConfigError


def write(tmp_path: Path, text: str, name: str = "dnsguard.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))
    return info.value


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """The classic: each anchor is a list of `width` aliases of the previous one (width**levels values)."""
    lines = ["a: &a [" + ",".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * width) + "]")
    lines.append(f"lists:\n  bomb:\n    sources: *{chr(ord('a') + levels - 1)}")
    return "\n".join(lines) + "\n"


def test_billion_laughs_fails_after_bounded_work(tmp_path: Path) -> None:
    text = billion_laughs()
    assert len(text) < 1000  # a few hundred bytes that expand to 9**9 values
    composer = Composer("bomb.yaml")
    with pytest.raises(ConfigError) as info:
        composer.compose(text)
    assert "aliases expanded" in info.value.message
    # It stops at the level whose aliases cross the bound (level f: 9**5 values), on that line.
    assert info.value.line == 6
    # Work done: every node built once (aliases share theirs), and the count stopped just past the bound.
    assert composer.nodes < 100
    assert composer.values <= MAX_VALUES + 9**5
    assert "aliases expanded" in str(load_error(tmp_path, text))


def test_billion_laughs_inside_a_mapping_key_fails_after_bounded_work() -> None:
    """Before, an error message printed such a key in full: 9**7 values took 4 s and 1.3 GB."""
    items = ["&a [" + ",".join(["lol"] * 9) + "]"]
    items += [f"&{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 9)]
    composer = Composer("key.yaml")
    with pytest.raises(ConfigError, match="aliases expanded"):
        composer.compose("? [" + ", ".join(items) + "]\n: x\n")
    assert composer.nodes < 100 and composer.values <= MAX_VALUES + 9**5


def test_aliases_within_the_bound_bind_normally(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("ads.example\n")
    text = (
        "upstreams:\n  servers: &dns [198.51.100.53]\n  conditional:\n    home.arpa: *dns\n"
        "lists:\n  ads:\n    sources: [a.txt]\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.upstreams.conditional == {"home.arpa": ["198.51.100.53"]}


def test_alias_to_its_own_container_is_an_error() -> None:
    with pytest.raises(ConfigError, match="contains it") as info:
        Composer("loop.yaml").compose("a: &x\n  b: *x\n")
    assert info.value.line == 2


def test_unknown_alias_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no anchor") as info:
        Composer("x.yaml").compose("a: 1\nb: *nowhere\n")
    assert info.value.line == 2


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_beyond_the_cap_is_an_error(tmp_path: Path, style: str) -> None:
    depth = MAX_DEPTH + 10
    if style == "flow":
        text = "cache: " + "[" * depth + "]" * depth + "\n"
    else:
        text = "".join("  " * level + f"k{level}:\n" for level in range(depth)) + "  " * depth + "v\n"
    composer = Composer("deep.yaml")
    with pytest.raises(ConfigError, match=f"more than {MAX_DEPTH} levels") as info:
        composer.compose(text)
    assert info.value.key == ("cache" if style == "flow" else "k0")
    assert composer.nodes <= 2 * MAX_DEPTH + 1  # a mapping key and its value per level
    assert "levels deep" in str(load_error(tmp_path, text))


def test_very_deep_flow_nesting_is_a_clear_error_not_a_recursion_error(tmp_path: Path) -> None:
    error = load_error(tmp_path, "cache: " + "[" * 3000 + "]" * 3000 + "\n")
    assert error.line == 1
    assert "nesting" in error.message or "levels deep" in error.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("!!int abc", "'abc' is not a valid !!int"),
        ("!!float x", "'x' is not a valid !!float"),
        ("!!bool maybe", "'maybe' is not a valid !!bool"),
        ("!!null something", "'something' is not a valid !!null"),
        ("!!int", "'' is not a valid !!int"),
        ("!!python/name:os.system", "tag !!python/name:os.system is not allowed"),
        ("!!python/object/apply:os.system ['true']", "tag !!python/object/apply:os.system is not allowed"),
        ("!!timestamp 2020-13-45", "tag !!timestamp is not allowed"),
        ("!!binary aGVsbG8=", "tag !!binary is not allowed"),
        ("!!set {a: null}", "tag !!set is not allowed"),
        ("!custom 5", "tag !custom is not allowed"),
    ],
)
def test_tags_beyond_the_core_schema_are_file_line_errors(tmp_path: Path, value: str, fragment: str) -> None:
    error = load_error(tmp_path, f"cache:\n  max-entries: {value}\n")
    assert (error.line, error.key) == (2, "cache.max-entries")
    assert fragment in error.message


def test_explicit_core_tags_are_values(tmp_path: Path) -> None:
    upstreams = "upstreams: {servers: [198.51.100.53]}\n"
    text = upstreams + "cache: {max-entries: !!int '500', prefetch: !!bool 'false'}\n"
    config = load_config(write(tmp_path, text))
    assert config.cache.max_entries == 500 and config.cache.prefetch is False


def test_dates_stay_text(tmp_path: Path) -> None:
    text = (
        "upstreams:\n  servers: [198.51.100.53]\n"
        'lists:\n  x:\n    description: 2020-01-02\n    sources: ["ads.example\\n"]\n'
    )
    config = load_config(write(tmp_path, text))
    assert config.lists["x"].description == "2020-01-02"


@pytest.mark.parametrize(
    ("text", "line", "key", "lines"),
    [
        ("lists:\n  a:\n    sources: ['x\\n']\n  a:\n    sources: ['y\\n']\n", 4, "lists.a", (2, 4)),
        ("groups:\n  kids: {}\n  adults: {}\n  kids: {}\n", 4, "groups.kids", (2, 4)),
        (
            "upstreams:\n  conditional:\n    home.arpa: [192.0.2.1]\n    home.arpa: [192.0.2.2]\n",
            4,
            "upstreams.conditional.home.arpa",
            (3, 4),
        ),
        ("cache:\n  prefetch: true\ncache:\n  prefetch: false\n", 3, "cache", (1, 3)),
        ("cache:\n  max-entries: 5\n  max_entries: 6\n", 3, "cache.max_entries", (2, 3)),
        (
            "rewrites:\n  - name: a.example\n    answer: [192.0.2.1]\n    name: b.example\n",
            4,
            "rewrites[0].name",
            (2, 4),
        ),
    ],
)
def test_duplicate_keys_name_both_lines(
    tmp_path: Path, text: str, line: int, key: str, lines: tuple[int, int]
) -> None:
    error = load_error(tmp_path, text)
    assert (error.line, error.key) == (line, key)
    assert f"lines {lines[0]} and {lines[1]}" in error.message


def test_a_list_as_mapping_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="plain value"):
        Composer("x.yaml").compose("? [a, b]\n: c\n")


def test_two_documents_are_an_error() -> None:
    with pytest.raises(ConfigError, match="one YAML document") as info:
        Composer("x.yaml").compose("cache: {}\n---\ncache: {}\n")
    assert info.value.line == 2


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * MAX_FILE_SIZE + b"\n")
    with pytest.raises(ConfigError, match="larger than") as info:
        load_config(path)
    assert info.value.file == str(path)


def test_non_utf8_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"lists:\n  caf\xe9: {}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_a_directory_as_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_composer_matches_pyyaml_on_ordinary_documents() -> None:
    text = "a: 1\nb: [x, 'y', 2.5, true, null, ~]\nc: {d: e}\nf: 0x1f\n"
    mine = document.compose(text, "x.yaml")
    reference = yaml.compose(text, Loader=yaml.SafeLoader)
    assert yaml.serialize(mine) == yaml.serialize(reference)


_PIECES = [
    "upstreams:", "  servers:", "    - ", "tunnel:", "  private-key: ", "  mtu: ", "  fwmark: ", "lists:",
    "  ads:", "    sources: ", "groups:", "  kids:", "    clients: ", "blocking:", "  ttl: ", "cache:",
    "  max-entries: ", "&a ", "*a", "!!int ", "!!str ", "!!float ", "!!python/name:x ", "[", "]", "{", "}",
    ", ", ": ", "- ", "? ", "'", '"', "\n", "  ", "#", "---", ".nan", "-.inf", "1e9", "0x1f", "99999999999",
    "198.51.100.53", "quic://x", "ads.txt", "~", "null", "true", "1:30", "2020-01-01", "<<: ", "|", ">",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=40))
def test_any_text_is_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, pieces: list[str]
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "dnsguard.yaml"
    path.write_text("".join(pieces))
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path))
