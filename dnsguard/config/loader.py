"""Bind YAML documents to typed dataclasses, with file:line:key in every error.

The YAML is composed into nodes (which carry their line numbers; see document.py for the bounds on
that work) and converted field by field against the dataclass type hints, so an unknown key, a wrong
type or a bad value is reported where it stands in the file instead of deep inside the daemon.
Numbers carry their allowed range in the type (``Annotated[int, Range(1, 65535, "a port")]``), and the
binder goes on after an error, so one pass reports every bad value, each as file:line: key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from dnsguard.config.document import MAX_FILE_SIZE, ScalarValue, compose
from dnsguard.errors import ConfigError, ConfigErrors, config_error

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"us": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


MAX_DURATION = 2**31 - 1
"""Seconds (about 68 years): the largest TTL (RFC 2181 §8), and more than any timer here needs."""
MAX_ERRORS = 50
"""Errors reported from one file before the binder stops looking."""


class Duration(float):
    """Seconds, written in YAML as a number or with a unit: 200us, 500ms, 2s, 5m, 4h, 1d."""


class ByteSize(int):
    """Bytes, written as a number or with a unit: 512K, 64M, 1G."""


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)


def parse_duration(text: str | int | float) -> Duration:
    """Seconds from a YAML duration; raises ValueError with a readable message."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as 30s, 5m or 2h")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _DURATION_RE.match(text)
        if not match:
            raise ValueError(f"{text!r} is not a duration (use e.g. 500ms, 30s, 5m, 2h, 1d)")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite duration")
    if value < 0:
        raise ValueError("a duration cannot be negative")
    if value > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than {MAX_DURATION} s (about 68 years)")
    return Duration(value)


def parse_size(text: str | int) -> ByteSize:
    """Bytes from a YAML size."""
    if isinstance(text, int) and not isinstance(text, bool):
        return ByteSize(text)
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (use e.g. 4096, 512K, 64M)")
    unit = (match.group(2) or "b").lower()[0]
    return ByteSize(int(match.group(1)) * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


@dataclasses.dataclass(frozen=True, slots=True)
class Range:
    """The allowed values of a number (inclusive), and why; attached as ``Annotated[int, Range(...)]``."""

    low: float
    high: float
    why: str = ""

    def check(self, value: float) -> None:
        """Raise ValueError naming the range (and its reason) when `value` is outside it."""
        if not self.low <= value <= self.high:
            raise ValueError(f"{_number(value)} is out of range: {self.describe()}")

    def describe(self) -> str:
        bounds = f"must be {_number(self.low)}..{_number(self.high)}"
        return f"{bounds} ({self.why})" if self.why else bounds


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{float(value):g}"


class Problems:
    """Collects ConfigErrors, so that one pass over a section reports all of them."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        """Run the block; a ConfigError raised in it is recorded instead of propagated."""
        try:
            yield
        except ConfigError as exc:
            self.errors.append(exc)

    def raise_any(self) -> None:
        """Raise what was collected: one ConfigError, or ConfigErrors for several."""
        if self.errors:
            raise config_error(self.errors)


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Something a configuration file says that dnsguard reads but does not apply; logged, not fatal."""

    message: str
    file: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        return str(ConfigError(self.message, file=self.file, line=self.line, key=self.key))


class _Reported(ConfigError):
    """A value below this node failed and its errors are already in the binder's list."""

    def __init__(self) -> None:
        super().__init__("errors reported below")


@dataclasses.dataclass(frozen=True, slots=True)
class Source:
    """Where a configuration document came from."""

    file: str

    def error(self, message: str, node: yaml.Node | None, key: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, key=key or None)


def _scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node (made by the composer; a node made here is null or text)."""
    if isinstance(node, ScalarValue):
        return node.data
    return None if node.tag.endswith(":null") else node.value


def field_key(field: dataclasses.Field[Any]) -> str:
    """The YAML key of a dataclass field: metadata 'key', else the name with '-' for '_'."""
    key = field.metadata.get("key")
    return str(key) if key else field.name.replace("_", "-")


class Binder:
    """Converts YAML nodes to values of annotated types."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.custom: dict[type, Callable[[Any], Any]] = {}
        self.errors: list[ConfigError] = []
        """Every error found so far; a failed container raises _Reported once its children are listed."""

    def _record(self, error: ConfigError) -> None:
        if not isinstance(error, _Reported):
            self.errors.extend(error.errors if isinstance(error, ConfigErrors) else (error,))
        if len(self.errors) >= MAX_ERRORS:
            raise _Reported

    def _attempt(self, node: yaml.Node | None, tp: Any, path: str) -> tuple[bool, Any]:
        """(True, value), or (False, None) with the errors recorded."""
        try:
            return True, self.bind(node, tp, path)
        except ConfigError as exc:
            self._record(exc)
            return False, None

    def bind(self, node: yaml.Node | None, tp: Any, path: str) -> Any:
        """Convert `node` to type `tp`; `path` is the dotted key used in errors."""
        origin = get_origin(tp)
        if origin is Annotated:
            base, *extras = get_args(tp)
            value = self.bind(node, base, path)
            for extra in extras:
                if isinstance(extra, Range) and value is not None:
                    try:
                        extra.check(value)
                    except ValueError as exc:
                        raise self.source.error(str(exc), node, path) from None
            return value
        if origin is typing.Union or origin is types.UnionType:
            options = [option for option in get_args(tp) if option is not type(None)]
            is_null = node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"))
            if is_null and len(options) < len(get_args(tp)):
                return None
            if len(options) == 1:
                return self.bind(node, options[0], path)
            messages: list[str] = []
            for option in options:
                mark = len(self.errors)
                try:
                    return self.bind(node, option, path)
                except ConfigError as exc:
                    found = self.errors[mark:] if isinstance(exc, _Reported) else [exc]
                    messages.extend(error.message for error in found)
                    del self.errors[mark:]
            raise self.source.error("; ".join(messages), node, path)
        if node is None:
            raise self.source.error("a value is required", node, path)
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self._bind_dataclass(node, tp, path)
        if origin in (list, tuple) or tp in (list, tuple):
            item_type = (get_args(tp) or (Any,))[0]
            if isinstance(node, yaml.ScalarNode) and not node.tag.endswith(":null"):
                # A single value where a list is expected is a one-item list.
                return [self.bind(node, item_type, path)]
            if not isinstance(node, yaml.SequenceNode):
                raise self.source.error("expected a list", node, path)
            items = [self._attempt(item, item_type, f"{path}[{i}]") for i, item in enumerate(node.value)]
            if not all(ok for ok, _ in items):
                raise _Reported
            return [value for _, value in items]
        if origin is dict or tp is dict:
            key_type, value_type = get_args(tp) or (str, Any)
            if not isinstance(node, yaml.MappingNode):
                raise self.source.error("expected a mapping", node, path)
            result = {}
            failed = False
            for key_node, value_node in node.value:
                ok, key = self._attempt(key_node, key_type, path)
                if ok:
                    ok, value = self._attempt(value_node, value_type, f"{path}.{key}" if path else str(key))
                    result[key] = value
                failed = failed or not ok
            if failed:
                raise _Reported
            return result
        if origin is Literal:
            value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
            allowed = get_args(tp)
            if value not in allowed:
                choices = ", ".join(str(a) for a in allowed)
                raise self.source.error(f"{value!r} is not one of: {choices}", node, path)
            return value
        if not isinstance(node, yaml.ScalarNode):
            raise self.source.error(f"expected a {_type_name(tp)}, not a {_node_kind(node)}", node, path)
        value = _scalar(node)
        try:
            return self._convert_scalar(value, tp)
        except (ValueError, TypeError) as exc:
            raise self.source.error(str(exc), node, path) from None

    def _convert_scalar(self, value: Any, tp: Any) -> Any:
        if tp in self.custom:
            return self.custom[tp](value)
        if tp is Any:
            return value
        if tp is Duration:
            return parse_duration(value)
        if tp is ByteSize:
            return parse_size(value)
        if tp is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, not {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected a whole number, not {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, not {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, not {value!r}")
            return float(value)
        if tp is str or getattr(tp, "__supertype__", None) is str:  # str, or a NewType of it
            if value is None or isinstance(value, list | dict):
                raise ValueError("expected a string")
            return str(value)
        if tp in (ipaddress.IPv4Address, ipaddress.IPv6Address):
            return tp(str(value))
        raise TypeError(f"unsupported configuration type {tp!r}")

    def _bind_dataclass(self, node: yaml.Node, tp: type[T], path: str) -> T:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            raise self.source.error(f"expected a mapping, not a {_node_kind(node)}", node, path)
        hints = get_type_hints(tp, include_extras=True)
        fields = {field_key(f): f for f in dataclasses.fields(tp) if f.init}  # type: ignore[arg-type]
        aliases = {key.replace("-", "_"): key for key in fields}
        values: dict[str, Any] = {}
        seen: dict[str, int] = {}
        failed = False
        for key_node, value_node in node.value:
            raw_key = str(key_node.value)
            key = raw_key if raw_key in fields else aliases.get(raw_key, raw_key)
            key_path = f"{path}.{raw_key}" if path else raw_key
            line = key_node.start_mark.line + 1
            if key not in fields:
                known = ", ".join(sorted(fields))
                self._record(self.source.error(f"unknown key (known keys: {known})", key_node, key_path))
                failed = True
                continue
            if key in seen:  # 'safe-search' and 'safe_search' are one key
                message = f"key given twice (lines {seen[key]} and {line})"
                self._record(self.source.error(message, key_node, key_path))
                failed = True
                continue
            seen[key] = line
            field = fields[key]
            ok, values[field.name] = self._attempt(value_node, hints[field.name], key_path)
            failed = failed or not ok
        for key, field in fields.items():
            if field.name not in values and _is_required(field) and key not in seen:
                self._record(self.source.error("this key is required", node, _join(path, key)))
                failed = True
        if failed:
            raise _Reported
        try:
            instance = tp(**values)
        except (ValueError, TypeError) as exc:
            raise self.source.error(str(exc), node, path) from None
        validate = getattr(instance, "validate", None)
        if validate is not None:
            try:
                validate()
            except ConfigError as exc:
                found = exc.errors if isinstance(exc, ConfigErrors) else (exc,)
                for error in found:
                    if error.file is None:
                        where = _find(node, error.key)
                        error = self.source.error(error.message, where, _join(path, error.key))
                    self._record(error)
                raise _Reported from None
            except ValueError as exc:
                raise self.source.error(str(exc), node, path) from None
        return instance


def _join(path: str, key: str | None) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


def _find(node: yaml.Node, key: str | None) -> yaml.Node:
    """The node at a dotted path like 'groups.kids.block[0]' below `node` (or the deepest found).

    Mapping keys may contain dots themselves ('upstreams.conditional.home.arpa[0]'): at a mapping, the
    key that the rest of the path starts with is taken.
    """
    rest = key or ""
    while rest:
        index = re.match(r"^\[(\d+)\]", rest)
        if index is not None and isinstance(node, yaml.SequenceNode):
            position = int(index.group(1))
            if position >= len(node.value):
                return node
            node, rest = node.value[position], rest[index.end() :]
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                name = str(key_node.value)
                for spelling in (name, name.replace("-", "_"), name.replace("_", "-")):
                    if rest == spelling or rest.startswith((f"{spelling}.", f"{spelling}[")):
                        node, rest = value_node, rest[len(spelling) :]
                        break
                else:
                    continue
                break
            else:
                return node
        else:
            return node
        rest = rest.removeprefix(".")
    return node


def _is_required(field: dataclasses.Field[Any]) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    return "value"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).lower().replace("str", "string")


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """A bound YAML document: the value, and its node tree to find the line of a key afterwards."""

    file: str
    root: yaml.Node

    def error(self, message: str, key: str) -> ConfigError:
        """A ConfigError for `key` (a dotted path such as 'lists.ads.sources[0]') at its line."""
        return Source(self.file).error(message, _find(self.root, key), key)


def load_document(text: str, tp: type[T], file: str) -> tuple[T, Document]:
    """Parse YAML text into dataclass `tp`; every error (all of them, in order) names file:line and key."""
    node = compose(text, file)
    binder = Binder(Source(file))
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], yaml.Mark(file, 0, 0, 0, "", 0), None)
    try:
        result: T = binder.bind(node, tp, "")
    except ConfigError as exc:
        if not isinstance(exc, _Reported):
            binder.errors.append(exc)
    if binder.errors:
        raise config_error(binder.errors)
    return result, Document(file, node)


def load_dataclass(text: str, tp: type[T], file: str) -> T:
    """Parse YAML text into dataclass `tp`; every error names file:line and key."""
    return load_document(text, tp, file)[0]


def read_text(path: str | Path) -> str:
    """A configuration file's text (at most MAX_FILE_SIZE); a missing, unreadable or oversized file is a
    ConfigError naming it."""
    try:
        with Path(path).open("rb") as stream:
            data = stream.read(MAX_FILE_SIZE + 1)
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a file", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=str(path)) from None
    if len(data) > MAX_FILE_SIZE:
        raise ConfigError(f"larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB", file=str(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", file=str(path)) from None
