"""What a regex rule tells about the names it can match, so the matcher runs it only for likely names.

`regex_hints` gives a suffix every match ends with and a literal every match contains; `label_hint` a
label every match holds whole. Each is conservative: '' where the pattern does not prove it (a property
test checks the hints against every name the pattern matches). `lists.py` indexes regex rules by them.
"""

from __future__ import annotations

from typing import Final

from dnsguard.filter.rules import canonical_name

__all__ = ["label_hint", "regex_hints"]


def _class_end(pattern: str, i: int) -> int:
    """Index just past the character class that starts at pattern[i] == '['; -1 if unterminated."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        if pattern.startswith("[:", j):
            # A POSIX class inside the set ([^.[:space:]]): its ']' does not close the set.
            close = pattern.find(":]", j + 2)
            if close >= 0:
                j = close + 2
                continue
        j += 2 if pattern[j] == "\\" else 1
    return j + 1 if j < len(pattern) else -1


def _escape_end(pattern: str, i: int) -> int:
    """Index just past the escape at pattern[i] == '\\', with its argument (\\x61, \\x{61}, \\pL, \\141)."""
    kind = pattern[i + 1]
    j = i + 2
    if kind in "xpP":
        if pattern.startswith("{", j):
            close = pattern.find("}", j)
            return len(pattern) if close < 0 else close + 1
        return min(j + (2 if kind == "x" else 1), len(pattern))
    if kind in "01234567":
        # An octal code: up to three digits in all.
        while j < min(i + 4, len(pattern)) and pattern[j] in "01234567":
            j += 1
    return j


def _quantifier_end(pattern: str, i: int) -> tuple[int, str]:
    """(index past the quantifier at pattern[i], its kind: '' none, '+' at least once, '*' maybe none)."""
    if i >= len(pattern):
        return i, ""
    q = pattern[i]
    if q == "{":
        close = pattern.find("}", i)
        if close < 0:
            return i, ""
        i, kind = close + 1, "*"
    elif q in "*?":
        i, kind = i + 1, "*"
    elif q == "+":
        i, kind = i + 1, "+"
    else:
        return i, ""
    if i < len(pattern) and pattern[i] in "?+":
        i += 1
    return i, kind


_LABEL_START: Final = ("(?:^|\\.)", "(^|\\.)", "^")
_LABEL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def label_hint(pattern: str) -> str:
    """A label every match contains whole (``(?:^|\\.)ads\\.`` -> ``ads``); '' where unknown."""
    for start in _LABEL_START:
        if pattern.startswith(start):
            break
    else:
        return ""
    label: list[str] = []
    i = len(start)
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt == ".":
                # The label must not be quantified away, nor the dot that ends it (`a\.*` may end in no
                # dot at all), and a top-level | would make it optional.
                whole = "".join(label)
                quantified = i + 2 < len(pattern) and pattern[i + 2] in "*?{+"
                if not whole or quantified or "|" in _top_level(pattern):
                    return ""
                return whole
            if nxt not in "-_":
                return ""
            label.append(nxt)
            i += 2
        elif c.lower() in _LABEL_CHARS:
            label.append(c.lower())
            i += 1
        else:
            return ""
        if i < len(pattern) and pattern[i] in "*?{+":
            return ""
    return ""


def _top_level(pattern: str) -> str:
    """The pattern with groups, classes and escapes removed (what a top-level scan sees)."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            end = _class_end(pattern, i)
            if end < 0:
                return "|"
            i = end
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0:
            out.append(c)
        i += 1
    return "".join(out)


def regex_hints(pattern: str) -> tuple[str, str]:
    """(label-aligned suffix every match ends with, literal every match contains); '' where unknown.

    The suffix lets the matcher try a regex only for names under it, the literal is a cheap ``in`` test
    before running the regex. Both are derived conservatively: a top-level alternation, or anything this
    small scanner does not understand, yields ''.
    """
    runs: list[str] = []
    run: list[str] = []
    depth = 0
    i = 0
    n = len(pattern)
    suffix_run = ""
    while i < n:
        c = pattern[i]
        literal = ""
        if c == "\\":
            if i + 1 >= n:
                return "", ""
            nxt = pattern[i + 1]
            literal = "" if nxt.isalnum() else nxt
            i = _escape_end(pattern, i)
        elif c == "[":
            i = _class_end(pattern, i)
            if i < 0:
                return "", ""
        elif c == "(":
            depth += 1
            i += 1
            continue
        elif c == ")":
            depth -= 1
            i += 1
        elif c == "|":
            if depth == 0:
                return "", ""
            i += 1
            continue
        elif c in "^$":
            if c == "$" and i == n - 1 and depth == 0 and run:
                suffix_run = "".join(run)
            i += 1
        elif c in ".*+?{}":
            i += 1
        else:
            literal = c.lower()
            i += 1
        i, quantifier = _quantifier_end(pattern, i)
        if literal and depth == 0 and quantifier != "*":
            run.append(literal)
            if not quantifier:
                continue
        if run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    literal_hint = max(runs, key=len) if runs else ""
    suffix = ""
    dot = suffix_run.find(".")
    if dot >= 0 and canonical_name(suffix_run[dot + 1 :]) == suffix_run[dot + 1 :]:
        suffix = suffix_run[dot + 1 :]
    return suffix, literal_hint
