"""Regex rules on a linear-time engine (RE2), so that no list line can stall the serving loop.

Python's `re` backtracks: ``/^(a|a)*$/`` takes 5 s on a 27-character name and twice as long for each
character more, and a filter for "nested quantifiers" cannot see that ``(a|a)*`` is one (nor
``(.*a){20}``, polynomial of degree 20). RE2 (the ``google-re2`` package, Google's maintained binding)
compiles a pattern into an automaton and searches in one pass over the name: time linear in the name's
length whatever the pattern, memory bounded per pattern.

Measured on the project's 2-core machine (Python 3.11, google-re2 1.1.20251105):

- realistic rules (182 adblock wildcard rules from the AdGuard DNS filter and hagezi's referral allowlist,
  21 Pi-hole regex rules), 4,000 real query names of 19.6 characters on average: `re` 170-210 ns per
  (rule, name) search, RE2 1.7-2.2 µs (most of it the binding's Python wrapper); the two engines agreed
  on all 812,000 searches;
- the patterns that stall `re`, on 255-character adversarial names: ``^(a|a)*$`` 2-8 µs, ``(a+)+b``
  3-5 µs, ``(.*a){20}`` 3-8 µs;
- the largest program among the realistic rules has 66 instructions. With `MAX_PROGRAM_SIZE` = 256 and
  `MEMORY_PER_REGEX` = 128 KiB the slowest adversarial search found was 8 µs; with 64 KiB the lazy DFA
  runs out of memory on some of them and RE2 falls back to its NFA (still linear, 56 µs); without the
  program cap, ``[a-z.-]{1,200}x$`` (1,604 instructions) took 720 µs.

So a regex rule costs about ten times a `re` search on an ordinary name, and at most a few microseconds
on any name. The matcher still tries a regex only when the name has the rule's suffix, label or literal
(see `regex_hints.regex_hints`), and at most `matcher.DEFAULT_MAX_REGEX_RULES` rules exist, so the worst query
costs a bounded number of linear passes: 9 ms measured for 1,000 rules that no hint narrows, on
255-character names (every realistic rule above has a hint). Memory is bounded the same way: at most
`MEMORY_PER_REGEX` per compiled rule, compiled on first use.

RE2's set matcher (all patterns in one automaton) would make a query one pass, but it has no NFA
fallback: when its DFA runs out of memory it answers "no match", which would let a name through.

The accepted grammar is RE2's (https://github.com/google/re2/wiki/Syntax), searched anywhere in the
lower-cased name, case-insensitive, with these refused at load (the line is counted as malformed, with
its file and line):

- what RE2 cannot run because it needs backtracking: backreferences (``\\1``, ``(?P=name)``),
  lookarounds (``(?=``, ``(?!``, ``(?<=``, ``(?<!``), atomic groups and possessive quantifiers,
  conditionals, and ``\\Z`` (Python's end of text: write ``$``);
- ``{,n}``, which Python reads as ``{0,n}`` and RE2 as literal text: write ``{0,n}``;
- ``\\Q...\\E`` quoting, which `regex_hints.regex_hints` does not understand (it would derive wrong hints);
- repetition counts over 1000 (RE2's limit), and any pattern whose compiled program has more than
  `MAX_PROGRAM_SIZE` instructions, which bounds the per-pattern work of the NFA fallback (Unicode
  classes such as ``\\pL`` are among them: over a thousand instructions each; names are ASCII).
"""

from __future__ import annotations

import re
from typing import Final, Protocol

import re2  # type: ignore[import-untyped]

from dnsguard.errors import DnsguardError

__all__ = [
    "MAX_PROGRAM_SIZE",
    "MEMORY_PER_REGEX",
    "CompiledRegex",
    "compile_regex",
    "regex_problem",
]

MAX_PROGRAM_SIZE: Final = 256
"""Instructions in a pattern's compiled RE2 program; realistic DNS rules need under 70."""

MEMORY_PER_REGEX: Final = 128 * 1024
"""RE2's memory budget for one pattern (program and lazily built DFA states)."""

_OPEN_LOWER_BOUND: Final = re.compile(r"(?<!\\)\{,[0-9]+\}")
# RE2's error for these names the construct; say why it is refused in the words of the grammar above.
_BACKTRACKING_ONLY: Final = (
    ("invalid escape sequence: \\Z", "\\Z (write $)"),
    ("invalid escape sequence: \\", "backreference"),
    ("invalid perl operator: (?=", "lookahead"),
    ("invalid perl operator: (?!", "lookahead"),
    ("invalid perl operator: (?<", "lookbehind"),
    ("invalid perl operator: (?>", "atomic group"),
    ("invalid perl operator: (?(", "conditional"),
    ("bad repetition operator: ++", "possessive quantifier"),
    ("bad repetition operator: *+", "possessive quantifier"),
    ("bad repetition operator: ?+", "possessive quantifier"),
)


class CompiledRegex(Protocol):
    """What the matcher needs of a compiled pattern."""

    def search(self, text: str) -> object | None:
        """A match object when the pattern occurs in `text`, else None."""


def _options() -> object:
    options = re2.Options()
    options.case_sensitive = False
    # Rules only answer "does it match": no capture bookkeeping, and no RE2 log lines on stderr for
    # patterns that are refused or searches that fall back from the DFA to the NFA.
    options.never_capture = True
    options.log_errors = False
    options.max_mem = MEMORY_PER_REGEX
    return options


_OPTIONS: Final = _options()


def _message(error: Exception) -> str:
    text = error.args[0] if error.args else str(error)
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


def _compile(pattern: str) -> tuple[CompiledRegex | None, str]:
    if _OPEN_LOWER_BOUND.search(pattern):
        return None, "unsupported regex syntax: repetition {,n} (write {0,n})"
    if _escapes(pattern, "Q"):
        return None, "unsupported regex syntax: \\Q...\\E quoting"
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        message = _message(exc)
        if message.startswith("invalid perl operator: (?P") and "(?P=" in pattern:
            # RE2 quotes only "(?P" here; Python's named backreference is what it refused.
            message = "invalid escape sequence: \\"
        for prefix, what in _BACKTRACKING_ONLY:
            if message.startswith(prefix):
                return None, f"unsupported regex syntax: {what} (needs a backtracking engine)"
        if message.startswith("pattern too large"):
            return None, f"regex too complex (over {MAX_PROGRAM_SIZE} instructions)"
        return None, f"invalid regex: {message}"
    size = compiled.programsize
    if size > MAX_PROGRAM_SIZE:
        return None, f"regex too complex ({size} instructions, at most {MAX_PROGRAM_SIZE})"
    return compiled, ""


def _escapes(pattern: str, letter: str) -> bool:
    """True when `pattern` has the escape backslash-`letter` (not an escaped backslash before it)."""
    i = pattern.find("\\")
    while 0 <= i < len(pattern) - 1:
        if pattern[i + 1] == letter:
            return True
        i = pattern.find("\\", i + 2)
    return False


def regex_problem(pattern: str) -> str:
    """Why `pattern` cannot be a regex rule ('' when it can): the reason shown for the refused line."""
    return _compile(pattern)[1]


def compile_regex(pattern: str) -> CompiledRegex:
    """The compiled rule; `pattern` must have passed `regex_problem` (raises DnsguardError if not)."""
    compiled, problem = _compile(pattern)
    if compiled is None:
        raise DnsguardError(f"regex rule /{pattern}/ refused: {problem}")
    return compiled
