"""YAML text to a node tree, with work bounded by the text's size and not by what the text asks for.

PyYAML's own composer follows the document wherever it leads: an alias is a pointer to an earlier node,
so a "billion laughs" file of a few hundred bytes (anchors, each a list of nine aliases of the previous
one) turns into 9^n values for whoever walks the tree (the loader this replaces, printing such a key in
an error message: 4.4 s and 1.3 GB for 9^7, far more for 9^9); 3000 nested brackets exhaust Python's
recursion limit; a tag such as ``!!python/name:`` or ``!!int abc`` fails deep inside a constructor with
a traceback; and a key given twice silently replaces the first.

This composer reads the parser's events in one loop with an explicit stack (no recursion) and enforces:

- at most MAX_FILE_SIZE characters of text;
- at most MAX_DEPTH nested lists and mappings;
- at most MAX_VALUES values counted as if every alias were expanded, so an alias costs the binder what
  it refers to and the bound holds for the whole walk;
- only the YAML core tags (str, int, float, bool, null, seq, map), each scalar converted here, so a bad
  value is a file:line error;
- every mapping key a plain value, given once (both lines are named).

Scalars that the YAML 1.1 resolver would read as dates or merge keys stay text: no configuration key
takes a date, and merge keys are not supported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import yaml
from yaml.constructor import SafeConstructor

from dnsguard.errors import ConfigError

MAX_FILE_SIZE = 4 * 1024 * 1024
"""Characters. A configuration is written by hand; big lists belong in list files, not inline."""
MAX_DEPTH = 64
"""Nested lists and mappings. The deepest path in the model is under ten levels."""
MAX_VALUES = 100_000
"""Values with every alias expanded; the shipped examples have a few hundred."""

_PREFIX = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (f"{_PREFIX}{name}" for name in ("str", "int", "float", "bool", "null"))
SEQ, MAP = f"{_PREFIX}seq", f"{_PREFIX}map"
_NULL_TEXTS = frozenset({"", "~", "null", "Null", "NULL"})

try:
    _Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = yaml.CSafeLoader  # libyaml: same events, faster
except AttributeError:  # PyYAML built without libyaml
    _Loader = yaml.SafeLoader

_resolver = yaml.resolver.Resolver()
_constructor = SafeConstructor()


def _construct_null(node: yaml.ScalarNode) -> None:
    if node.value not in _NULL_TEXTS:
        raise ValueError(node.value)


_CONSTRUCT: dict[str, Callable[[yaml.ScalarNode], object]] = {
    STR: lambda node: node.value,
    INT: _constructor.construct_yaml_int,
    FLOAT: _constructor.construct_yaml_float,
    BOOL: _constructor.construct_yaml_bool,
    NULL: _construct_null,
}


def _mark(mark: Any) -> yaml.Mark:
    """libyaml's marks are another class with the same fields (line, column); nodes only read those."""
    return cast(yaml.Mark, mark)


def short_tag(tag: str) -> str:
    """'tag:yaml.org,2002:int' as '!!int', as it is written in a file."""
    return "!!" + tag[len(_PREFIX) :] if tag.startswith(_PREFIX) else tag


class ScalarValue(yaml.ScalarNode):
    """A scalar node with its Python value already made (`data`: str, int, float, bool or None)."""

    def __init__(self, event: yaml.ScalarEvent, tag: str, data: object) -> None:
        super().__init__(tag, event.value, _mark(event.start_mark), _mark(event.end_mark), event.style)
        self.data = data


@dataclass(slots=True)
class _Open:
    """A list or mapping whose end event has not come yet."""

    node: yaml.SequenceNode | yaml.MappingNode
    anchor: str | None
    path: str
    size: int = 1
    """Values below and including this node, aliases expanded."""
    key: yaml.ScalarNode | None = None
    """A mapping's key waiting for its value."""
    key_lines: dict[str, int] = field(default_factory=dict)


class Composer:
    """Builds one document's node tree from parser events; `values` and `nodes` count the work done."""

    def __init__(self, file: str, *, max_depth: int = MAX_DEPTH, max_values: int = MAX_VALUES) -> None:
        self.file = file
        self.max_depth = max_depth
        self.max_values = max_values
        self.values = 0
        """Values so far, aliases expanded (what a walk of the tree will visit)."""
        self.nodes = 0
        """Nodes actually built (aliases share theirs)."""
        self._anchors: dict[str, tuple[yaml.Node, int]] = {}
        self._open_anchors: set[str] = set()
        self._stack: list[_Open] = []
        self._root: yaml.Node | None = None

    def compose(self, text: str) -> yaml.Node | None:
        """The document's root node (None for an empty document); ConfigError with file:line otherwise."""
        if len(text) > MAX_FILE_SIZE:
            raise ConfigError(f"larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB", file=self.file)
        try:
            self._run(yaml.parse(text, Loader=_Loader))
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise ConfigError(f"YAML syntax error: {exc.problem or exc}", file=self.file, line=line) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"YAML error: {exc}", file=self.file) from None
        return self._root

    def _run(self, events: Iterator[yaml.Event]) -> None:
        documents = 0
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self._error("a configuration file holds one YAML document (remove '---')", event)
            elif isinstance(event, yaml.AliasEvent):
                self._alias(event)
            elif isinstance(event, yaml.ScalarEvent):
                node = self._scalar(event)
                self._count(1, event)
                if event.anchor is not None:
                    self._anchors[event.anchor] = (node, 1)
                self._attach(node, 1, event)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                self._start(event)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                done = self._stack.pop()
                if done.anchor is not None:
                    self._open_anchors.discard(done.anchor)
                    self._anchors[done.anchor] = (done.node, done.size)
                self._attach(done.node, done.size, event)

    def _error(self, message: str, event: yaml.Event, key: str | None = None) -> ConfigError:
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        return ConfigError(message, file=self.file, line=line, key=key or self._child_path() or None)

    def _count(self, size: int, event: yaml.Event) -> None:
        self.values += size
        if self.values > self.max_values:
            raise self._error(
                f"more than {self.max_values} values with aliases expanded (an alias repeats what it"
                " refers to; write the values out or use fewer aliases)",
                event,
            )

    def _alias(self, event: yaml.AliasEvent) -> None:
        anchor = str(event.anchor)
        if anchor in self._open_anchors:
            raise self._error(f"alias *{anchor} refers to a node that contains it", event)
        if anchor not in self._anchors:
            raise self._error(f"alias *{anchor} has no anchor &{anchor} before it", event)
        node, size = self._anchors[anchor]
        self._count(size, event)
        self._attach(node, size, event)

    def _scalar(self, event: yaml.ScalarEvent) -> ScalarValue:
        self.nodes += 1
        explicit = event.tag not in (None, "!")
        if explicit:
            tag = str(event.tag)
        else:
            tag = _resolver.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
            if tag not in _CONSTRUCT:  # dates, merge keys, '=': text
                tag = STR
        if tag not in _CONSTRUCT:
            allowed = ", ".join(short_tag(t) for t in _CONSTRUCT)
            raise self._error(f"tag {short_tag(tag)} is not allowed (allowed: {allowed})", event)
        node = ScalarValue(event, tag, None)
        try:
            node.data = _CONSTRUCT[tag](node)
        except (ValueError, LookupError, ArithmeticError, TypeError, yaml.YAMLError):  # '!!int ' is ''[0]
            raise self._error(f"{event.value!r} is not a valid {short_tag(tag)}", event) from None
        return node

    def _start(self, event: yaml.SequenceStartEvent | yaml.MappingStartEvent) -> None:
        if len(self._stack) >= self.max_depth:
            # Named by the top-level key: the full path would be dozens of "[0]" long.
            outermost = self._stack[1].path if len(self._stack) > 1 else None
            raise self._error(f"nested more than {self.max_depth} levels deep", event, outermost)
        is_map = isinstance(event, yaml.MappingStartEvent)
        default = MAP if is_map else SEQ
        tag = default if event.tag in (None, "!") else str(event.tag)
        if tag != default:
            message = f"tag {short_tag(tag)} is not allowed here (use a plain list or mapping)"
            raise self._error(message, event)
        node: yaml.SequenceNode | yaml.MappingNode
        if is_map:
            node = yaml.MappingNode(tag, [], _mark(event.start_mark), None, event.flow_style)
        else:
            node = yaml.SequenceNode(tag, [], _mark(event.start_mark), None, event.flow_style)
        self.nodes += 1
        self._count(1, event)
        path = self._child_path()
        if event.anchor is not None:
            self._open_anchors.add(event.anchor)
        self._stack.append(_Open(node, event.anchor, path))

    def _child_path(self) -> str:
        """The dotted key of the value that comes next (as the binder names it in errors)."""
        if not self._stack:
            return ""
        parent = self._stack[-1]
        if isinstance(parent.node, yaml.SequenceNode):
            return f"{parent.path}[{len(parent.node.value)}]"
        if parent.key is None:
            return parent.path
        key = str(parent.key.value)
        return f"{parent.path}.{key}" if parent.path else key

    def _attach(self, node: yaml.Node, size: int, event: yaml.Event) -> None:
        if not self._stack:
            self._root = node
            return
        parent = self._stack[-1]
        parent.size += size
        if isinstance(parent.node, yaml.SequenceNode):
            parent.node.value.append(node)
            return
        if parent.key is not None:
            parent.node.value.append((parent.key, node))
            parent.key = None
            return
        if not isinstance(node, yaml.ScalarNode):
            raise self._error("a mapping key must be a plain value, not a list or mapping", event)
        text = str(node.value)
        line = node.start_mark.line + 1
        if text in parent.key_lines:
            key = f"{parent.path}.{text}" if parent.path else text
            raise self._error(f"key given twice (lines {parent.key_lines[text]} and {line})", event, key)
        parent.key_lines[text] = line
        parent.key = node


def compose(text: str, file: str) -> yaml.Node | None:
    """YAML text to a node tree with bounded work; every problem is a ConfigError naming file:line."""
    return Composer(file).compose(text)
