"""Bind YAML documents to typed dataclasses, with file:line:key in every error.

The YAML is composed into nodes (which carry their line numbers) and converted field by field
against the dataclass type hints, so an unknown key, a wrong type or a bad value is reported
where it stands in the file instead of deep inside the daemon.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from dnsguard.errors import ConfigError

T = TypeVar("T")

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class Duration(float):
    """Seconds, written in YAML as a number or with a unit: 500ms, 2s, 5m, 4h, 1d."""


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
    if value < 0:
        raise ValueError("a duration cannot be negative")
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
class Source:
    """Where a configuration document came from."""

    file: str

    def error(self, message: str, node: yaml.Node | None, key: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(message, file=self.file, line=line, key=key or None)


def _scalar(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value


def compose(text: str, file: str) -> yaml.Node | None:
    """YAML text to a node tree; syntax errors become ConfigError with the line."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None


def field_key(field: dataclasses.Field[Any]) -> str:
    """The YAML key of a dataclass field: metadata 'key', else the name with '-' for '_'."""
    key = field.metadata.get("key")
    return str(key) if key else field.name.replace("_", "-")


class Binder:
    """Converts YAML nodes to values of annotated types."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.custom: dict[type, Callable[[Any], Any]] = {}

    def bind(self, node: yaml.Node | None, tp: Any, path: str) -> Any:
        """Convert `node` to type `tp`; `path` is the dotted key used in errors."""
        origin = get_origin(tp)
        if origin is typing.Union or origin is types.UnionType:
            options = get_args(tp)
            is_null = node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"))
            if is_null and type(None) in options:
                return None
            errors = []
            for option in options:
                if option is type(None):
                    continue
                try:
                    return self.bind(node, option, path)
                except ConfigError as exc:
                    errors.append(exc)
            raise (
                errors[0]
                if len(errors) == 1
                else self.source.error("; ".join(e.message for e in errors), node, path)
            )
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
            return [self.bind(item, item_type, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if origin is dict or tp is dict:
            key_type, value_type = get_args(tp) or (str, Any)
            if not isinstance(node, yaml.MappingNode):
                raise self.source.error("expected a mapping", node, path)
            result = {}
            for key_node, value_node in node.value:
                key = self.bind(key_node, key_type, path)
                result[key] = self.bind(value_node, value_type, f"{path}.{key}" if path else str(key))
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
            return float(value)
        if tp is str:
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
        hints = get_type_hints(tp)
        fields = {field_key(f): f for f in dataclasses.fields(tp) if f.init}  # type: ignore[arg-type]
        aliases = {key.replace("-", "_"): key for key in fields}
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for key_node, value_node in node.value:
            raw_key = str(key_node.value)
            key = raw_key if raw_key in fields else aliases.get(raw_key, raw_key)
            key_path = f"{path}.{raw_key}" if path else raw_key
            if key not in fields:
                known = ", ".join(sorted(fields))
                raise self.source.error(f"unknown key (known keys: {known})", key_node, key_path)
            if key in seen:
                raise self.source.error("key given twice", key_node, key_path)
            seen.add(key)
            field = fields[key]
            values[field.name] = self.bind(value_node, hints[field.name], key_path)
        for key, field in fields.items():
            if field.name not in values and _is_required(field):
                raise self.source.error("this key is required", node, f"{path}.{key}" if path else key)
        try:
            instance = tp(**values)
        except (ValueError, TypeError) as exc:
            raise self.source.error(str(exc), node, path) from None
        validate = getattr(instance, "validate", None)
        if validate is not None:
            try:
                validate()
            except ConfigError as exc:
                if exc.file is None:
                    raise self.source.error(exc.message, _find(node, exc.key), _join(path, exc.key)) from None
                raise
            except ValueError as exc:
                raise self.source.error(str(exc), node, path) from None
        return instance


def _join(path: str, key: str | None) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


def _find(node: yaml.Node, key: str | None) -> yaml.Node:
    """The node at a dotted path like 'groups.kids.block[0]' below `node` (or the deepest found)."""
    if not key:
        return node
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        if part.startswith("[") and isinstance(node, yaml.SequenceNode):
            index = int(part[1:-1])
            if index >= len(node.value):
                return node
            node = node.value[index]
        elif isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if str(key_node.value) in (part, part.replace("_", "-"), part.replace("-", "_")):
                    node = value_node
                    break
            else:
                return node
        else:
            return node
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


def load_dataclass(text: str, tp: type[T], file: str) -> T:
    """Parse YAML text into dataclass `tp`; every error names file:line and key."""
    node = compose(text, file)
    binder = Binder(Source(file))
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [], yaml.Mark(file, 0, 0, 0, "", 0), None)
    result: T = binder.bind(node, tp, "")
    return result


def read_text(path: str | Path) -> str:
    """A configuration file's text; a missing or unreadable file is a ConfigError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", file=str(path)) from None
