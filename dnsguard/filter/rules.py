"""One blocklist line in, the rules it holds out: hosts, plain domains, wildcards, adblock, dnsmasq, regex.

`parse_line` is the reference parser: every line of every format goes through it unless the bulk fast
path in `lists.py` proves that the line has the file's dominant shape (``0.0.0.0 name``, ``||name^``...),
in which case both must agree (a property test checks that they do).

Semantics chosen here (see also the package docstring):

- hosts and plain-domain entries match the name exactly (Pi-hole, AdGuard), unless the list says
  ``subdomains: true`` or its header declares "Domains (without subdomains)" (hagezi's onlydomains files,
  whose every entry stands for the name and all its subdomains);
- ``*.example.com`` in a wildcard list, ``||example.com^``, dnsmasq ``address=/example.com/`` and
  ``server=/example.com/`` cover the name and its subdomains (oisd, blocky, AdGuard, dnsmasq);
- ``.example.com^``, ``://*.example.com^`` and ``*.example.com^`` (adblock, with the separator) cover only
  the subdomains; ``|example.com^``, ``://example.com^`` and ``http://example.com^`` only the name;
- adblock patterns with ``*`` inside the name, or ending in a partial label (``||ads.``), become regex rules;
  ``||example.com/*`` (every path of the host) is the host; rules with another path, a query or a port,
  cosmetic rules and rules with browser-only modifiers (``$image``, ``$third-party``...) are skipped and
  counted, because they make no sense for DNS;
- rules with DNS modifiers (``$dnstype``, ``$client``, ``$ctag``, ``$denyallow``, ``$dnsrewrite``, see
  `modifiers`) are SIDE lines: their pattern is read as above, their modifier values as written (case and
  spaces kept); ``*``, ``||*^`` or no pattern at all (``$dnstype=HTTPS,dnsrewrite=NOERROR;;``) covers
  every name; a modifier value that does not parse makes the line malformed;
- ``||example.com`` without the separator and a bare ``example.com^`` are read like ``||example.com^``
  (strictly, adblock would also match ``example.community`` and ``badexample.com``; list authors mean the
  domain); a bare ``example.com`` is a plain entry, exact as in AdGuard;
- a hosts line with ``0.0.0.0``, a loopback address or ``::`` blocks its names; one with a real address
  (``192.0.2.10 nas.home.arpa``) is a SIDE line whose names answer with it, as /etc/hosts, Pi-hole and
  AdGuard Home do; localhost-style names (`PSEUDO_HOSTS`) are never rules;
- a Punycode label (``xn--``) that does not decode and encode back to itself makes the name malformed;
- rules naming an IP address (``||1.2.3.4^``, a bare ``1.2.3.4``) are skipped: they filter answers, not names;
- regex rules (``/re/``, ``@@/re/``, with ``$important``) run on RE2, case-insensitive, searched
  anywhere in the name; patterns longer than `MAX_REGEX_LENGTH`, or outside the grammar `regex` accepts
  (backreferences, lookarounds, programs over `regex.MAX_PROGRAM_SIZE`...), are malformed lines.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from dnsguard.filter import modifiers
from dnsguard.filter.modifiers import DNS_MODIFIERS, ModifierError
from dnsguard.filter.regex import regex_problem
from dnsguard.filter.side import SideRule

__all__ = [
    "ALLOWED_NAME_CHARS",
    "EXCERPT_CHARS",
    "MAX_REGEX_LENGTH",
    "PSEUDO_HOSTS",
    "LineResult",
    "Outcome",
    "Scope",
    "canonical_name",
    "category",
    "category_allow",
    "category_important",
    "category_scope",
    "excerpt",
    "folded_name",
    "name_problem",
    "parse_line",
]


class Scope(enum.IntEnum):
    """Which names a listed name covers."""

    EXACT = 0
    """The name itself only."""
    SUFFIX = 1
    """The name and every name below it (``||x^``, ``*.x``)."""
    SUBDOMAINS = 2
    """Names below it, not the name itself (``.x^``)."""


# A rule's category packs scope, importance and allow/block into a small int: it is stored once per block
# of rules, and the matcher's per-group tables are indexed by it.
_IMPORTANT: Final = 4
_ALLOW: Final = 8


def category(scope: Scope, *, allow: bool = False, important: bool = False) -> int:
    """Pack a rule's scope, importance and role into the small int the parser and matcher share."""
    return int(scope) | (_IMPORTANT if important else 0) | (_ALLOW if allow else 0)


def category_scope(cat: int) -> Scope:
    """The scope packed in a category."""
    return Scope(cat & 3)


def category_allow(cat: int) -> bool:
    """True when the category is an allow (exception) rule."""
    return bool(cat & _ALLOW)


def category_important(cat: int) -> bool:
    """True when the category carries ``$important``."""
    return bool(cat & _IMPORTANT)


class Outcome(enum.Enum):
    """What a line turned out to be."""

    RULE = "rule"
    REGEX = "regex"
    BADFILTER = "badfilter"
    SIDE = "side"
    """A rule with DNS modifiers, or a hosts line with real addresses: `LineResult.side`."""
    BLANK = "blank"
    COMMENT = "comment"
    PSEUDO = "pseudo-host"
    SKIPPED = "skipped"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
class LineResult:
    """The rules one line holds, or why it holds none."""

    outcome: Outcome
    category: int = 0
    names: tuple[str, ...] = ()
    """Canonical names (lower case, punycode, no trailing dot) for RULE and name BADFILTER lines."""
    pattern: str = ""
    """The regular expression of a REGEX line (or of a regex BADFILTER line), case preserved."""
    reason: str = ""
    """Why the line was skipped or malformed; for a RULE line, a problem with some of its names."""
    side: SideRule | None = None
    """The rule of a SIDE line, or of a BADFILTER line that names a rule with DNS modifiers."""


ALLOWED_NAME_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789-_."
"""Characters a canonical name may contain; underscores appear in real lists (``_dmarc``) and in DNS."""

PSEUDO_HOSTS: Final = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "0.0.0.0",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
    }
)
"""Names hosts files map to loopback addresses for the operating system's sake; never blocked."""

MAX_REGEX_LENGTH: Final = 512

EXCERPT_CHARS: Final = 80
"""How much of a list line or token a reason or report quotes."""
_MAX_PROBLEMS: Final = 3

_SINKHOLES: Final = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0", "0:0:0:0:0:0:0:0", "::0"})
_DNSMASQ_BLOCK_TARGETS: Final = frozenset({"", "#", "0.0.0.0", "::", "127.0.0.1", "::1"})
_COSMETIC_MARKERS: Final = ("##", "#@#", "#?#", "#$#", "#%#", "#@$#", "#@%#", "#@?#", "$$", "$@$")
_SCHEME: Final = re.compile(r"\|?[a-z*][a-z0-9*+.-]*://")
_URL_CHARS: Final = frozenset("/?=&;:#,~+%@!'\"()[]{}<>\\ ")
_DNSMASQ_KEY: Final = re.compile(r"[a-z][a-z0-9-]*=")
_MODIFIER: Final = re.compile(r"~?[a-z][a-z0-9_-]*(?:=.*)?")
_DNS_MODIFIER_LINE: Final = re.compile(r"\$(?:.*,)?\s*~?(?:dnstype|dnsrewrite|client|ctag|denyallow)\b", re.I)
_NAME_CHARSET: Final = frozenset(ALLOWED_NAME_CHARS)


def excerpt(text: str) -> str:
    """`text` quoted for a reason or a log line: its first `EXCERPT_CHARS` characters and its size."""
    if len(text) <= EXCERPT_CHARS:
        return repr(text)
    return f"{text[:EXCERPT_CHARS]!r}…({len(text.encode('utf-8', 'replace'))} bytes)"


def _is_ip(token: str) -> bool:
    if token in _SINKHOLES:
        return True
    if not token or token[0] not in "0123456789abcdef:":
        return False
    try:
        ipaddress.ip_address(token.partition("%")[0])
    except ValueError:
        return False
    return True


def _is_ipv4_literal(name: str) -> bool:
    labels = name.split(".")
    return len(labels) == 4 and all(label.isdigit() and int(label) < 256 for label in labels)


def name_problem(name: str) -> str | None:
    """Why a lower-case ASCII name without trailing dot is not a usable rule name (None: it is)."""
    if not name:
        return "empty name"
    bad = set(name) - _NAME_CHARSET
    if bad:
        return f"invalid character {min(bad)!r} in name"
    if name[0] == "." or name[-1] == "." or ".." in name:
        return "empty label in name"
    if len(name) > 253:
        return "name longer than 253 characters"
    if len(name) > 63 and max(map(len, name.split("."))) > 63:
        return "label longer than 63 characters"
    last = name[name.rfind(".") + 1 :]
    if last.isdigit():
        return "ip address" if _is_ipv4_literal(name) else "numeric top-level label"
    if "xn--" in name:
        for label in name.split("."):
            if label.startswith("xn--") and not _punycode_round_trips(label):
                return f"invalid punycode label {excerpt(label)}"
    return None


def _punycode_round_trips(label: str) -> bool:
    """True when an ACE label's Punycode decodes to printable non-ASCII text that encodes back to it.

    Checked at the Punycode level (RFC 3492), not by IDNA 2003's nameprep, which refuses labels that
    IDNA 2008 registries hand out (and that blocklists list).
    """
    try:
        decoded = label[4:].encode("ascii").decode("punycode")
        encoded = decoded.encode("punycode").decode("ascii")
    except UnicodeError:
        return False
    return not decoded.isascii() and decoded.isprintable() and "xn--" + encoded == label


def _to_ascii(name: str) -> str | None:
    # IDNA 2003 (Python's codec): applies nameprep, which also folds case; None for names it rejects.
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def folded_name(text: str) -> str | None:
    """Lower-case, punycode, no trailing dot: the form every name is matched in; None if IDNA rejects it.

    Unlike canonical_name, the name's shape is not checked (an address literal or a long label passes),
    so a query for any name can be explained.
    """
    name = text.strip().lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        return _to_ascii(name)
    return name


def canonical_name(text: str) -> str | None:
    """Lower-case, punycode, no trailing dot; None when the text is not a usable domain name."""
    name = folded_name(text)
    return None if name is None or name_problem(name) else name


def _is_pseudo(name: str) -> bool:
    return name in PSEUDO_HOSTS or (name.startswith("ip6-") and "." not in name)


def _name_result(raw: str, cat: int) -> LineResult:
    """A single-name rule, or why the name cannot be one."""
    name = raw[:-1] if raw.endswith(".") else raw
    if not name.isascii():
        converted = _to_ascii(name)
        if converted is None:
            return LineResult(Outcome.MALFORMED, reason="invalid internationalized name")
        name = converted
    if _is_pseudo(name):
        return LineResult(Outcome.PSEUDO)
    problem = name_problem(name)
    if problem == "ip address":
        return LineResult(Outcome.SKIPPED, reason="ip address rule (filters answers, not names)")
    if problem:
        return LineResult(Outcome.MALFORMED, reason=problem)
    return LineResult(Outcome.RULE, cat, (name,))


def parse_line(line: str, *, allow: bool = False, subdomains: bool = False) -> LineResult:
    """Parse one list line; `allow` marks an allowlist, `subdomains` widens hosts and plain entries."""
    text = line.strip()
    if not text:
        return LineResult(Outcome.BLANK)
    first = text[0]
    if first == "!":
        return LineResult(Outcome.COMMENT)
    if first == "#":
        # Also adblock's generic cosmetic rules (##.banner): ignored either way, and hosts files decorate
        # their headers with runs of '#'.
        return LineResult(Outcome.COMMENT)
    if first == "[" and text[-1] == "]":
        return LineResult(Outcome.COMMENT)
    regex = _parse_regex_line(text, allow)
    if regex is not None:
        return regex
    low = text.lower()
    if any(marker in low for marker in _COSMETIC_MARKERS):
        return LineResult(Outcome.SKIPPED, reason="cosmetic rule")
    dollar = text.find("$")
    if dollar >= 0 and not any(c.isspace() for c in text[:dollar]) and _DNS_MODIFIER_LINE.search(text):
        # Values may hold spaces and upper case ($client='My laptop', $dnsrewrite=NOERROR;MX;10 mx.x).
        scope = Scope.SUFFIX if subdomains else Scope.EXACT
        return _parse_adblock(text[:dollar].lower(), allow, scope, text[dollar + 1 :], text)
    if "#" in low:
        # Hosts and domain lists put comments after the entry; adblock has no inline comments.
        low = low[: low.index("#")].rstrip()
        if not low:
            return LineResult(Outcome.COMMENT)
    plain_scope = Scope.SUFFIX if subdomains else Scope.EXACT
    tokens = low.split()
    if len(tokens) > 1:
        return _parse_hosts(tokens, category(plain_scope, allow=allow), text)
    token = tokens[0]
    if _DNSMASQ_KEY.match(token):
        return _parse_dnsmasq(token, allow)
    if _is_ip(token):
        return LineResult(Outcome.SKIPPED, reason="ip address rule (filters answers, not names)")
    if token.startswith(("|", "@@", ".", "*", "/", ":")) or any(c in token for c in "^$*|/"):
        return _parse_adblock(token, allow, plain_scope)
    return _name_result(token, category(plain_scope, allow=allow))


def _parse_hosts(tokens: list[str], cat: int, text: str) -> LineResult:
    if not _is_ip(tokens[0]):
        return LineResult(Outcome.MALFORMED, reason="expected an address followed by names")
    if tokens[0] not in _SINKHOLES and not category_allow(cat):
        return _hosts_records(tokens, cat, text)
    names: list[str] = []
    problems: list[str] = []
    for token in tokens[1:]:
        result = _name_result(token, cat)
        if result.outcome is Outcome.RULE:
            names.extend(result.names)
        elif result.outcome is not Outcome.PSEUDO:
            problems.append(f"{excerpt(token)}: {result.reason}")
    # Reasons are counted per distinct text and logged: a line of a thousand bad names gives one short one.
    reason = "; ".join(problems[:_MAX_PROBLEMS])
    if len(problems) > _MAX_PROBLEMS:
        reason += f"; and {len(problems) - _MAX_PROBLEMS} more"
    if names:
        return LineResult(Outcome.RULE, cat, tuple(names), reason=reason)
    if problems:
        return LineResult(Outcome.MALFORMED, reason=reason)
    return LineResult(Outcome.PSEUDO)


def _hosts_records(tokens: list[str], cat: int, text: str) -> LineResult:
    """A hosts line with a real address: its names answer with it, as /etc/hosts does."""
    address = ipaddress.ip_address(tokens[0].partition("%")[0])
    if address.is_unspecified or address.is_loopback:
        return _parse_hosts(["0.0.0.0", *tokens[1:]], cat, text)
    result = _parse_hosts(["0.0.0.0", *tokens[1:]], category(Scope.EXACT), text)
    if result.outcome is not Outcome.RULE:
        return result
    rtype = 1 if address.version == 4 else 28
    side = SideRule(
        f"{address} {' '.join(result.names)}",
        scope=category_scope(cat),
        names=result.names,
        records=((rtype, address.packed),),
        line_text=text,
    )
    return LineResult(Outcome.SIDE, cat, result.names, reason=result.reason, side=side)


def _parse_dnsmasq(token: str, allow: bool) -> LineResult:
    key, _, value = token.partition("=")
    if key not in ("address", "server", "local"):
        return LineResult(Outcome.SKIPPED, reason=f"dnsmasq option {excerpt(key)}")
    if not value.startswith("/"):
        return LineResult(Outcome.MALFORMED, reason=f"dnsmasq {key}= without /domain/")
    parts = value[1:].split("/")
    if len(parts) < 2:
        return LineResult(Outcome.MALFORMED, reason=f"dnsmasq {key}= without closing /")
    *domains, target = parts
    if key == "address" and target not in _DNSMASQ_BLOCK_TARGETS:
        return LineResult(Outcome.SKIPPED, reason="dnsmasq address= with a custom answer (a rewrite)")
    if key == "server" and target:
        return LineResult(Outcome.SKIPPED, reason="dnsmasq server= forwarding to an upstream")
    cat = category(Scope.SUFFIX, allow=allow)
    names: list[str] = []
    for domain in domains:
        result = _name_result(domain, cat)
        if result.outcome is not Outcome.RULE:
            return result
        names.extend(result.names)
    if not names:
        return LineResult(Outcome.MALFORMED, reason="dnsmasq rule without a domain")
    return LineResult(Outcome.RULE, cat, tuple(names))


def _split_modifiers(body: str) -> tuple[str, list[str]] | None:
    """Body and modifier names; None when the text after the last ``$`` is not a modifier list."""
    dollar = body.rfind("$")
    if dollar < 0:
        return body, []
    mods = body[dollar + 1 :].split(",")
    if not all(_MODIFIER.fullmatch(m) for m in mods):
        return None
    return body[:dollar], [m.partition("=")[0].lstrip("~") for m in mods]


def _apply_modifiers(mods: list[str]) -> tuple[bool, bool, str]:
    """(important, badfilter, why the rule must be skipped or '')."""
    important = badfilter = False
    for mod in mods:
        if mod == "important":
            important = True
        elif mod == "badfilter":
            badfilter = True
        elif mod in DNS_MODIFIERS:
            continue
        else:
            shown = mod if len(mod) <= EXCERPT_CHARS else excerpt(mod)
            return important, badfilter, f"modifier ${shown} does not apply to DNS"
    return important, badfilter, ""


def _parse_regex_line(text: str, allow_list: bool) -> LineResult | None:
    body = text
    allow = allow_list
    if body.startswith("@@"):
        allow = True
        body = body[2:]
    if not body.startswith("/") or body.startswith("//"):
        return None
    # The pattern ends at the last '/' before the modifiers ($client=192.0.2.0/24 holds one too).
    close = body.rfind("/$")
    if close < 0:
        close = body.rfind("/")
    if close < 2:
        return None
    tail = body[close + 1 :]
    if tail and not tail.startswith("$"):
        return None
    pattern = body[1:close]
    split = _split_modifiers(tail) if tail else ("", [])
    if split is None:
        return None
    important, badfilter, skip = _apply_modifiers(split[1])
    if skip:
        return LineResult(Outcome.SKIPPED, reason=skip)
    if DNS_MODIFIERS.intersection(mod.lstrip("~") for mod in split[1]) and len(pattern) <= MAX_REGEX_LENGTH:
        problem = regex_problem(pattern)
        if problem:
            return LineResult(Outcome.MALFORMED, reason=problem)
        regex = LineResult(
            Outcome.REGEX, category(Scope.EXACT, allow=allow, important=important), pattern=pattern
        )
        return _side_result(regex, ("@@" if text.startswith("@@") else "") + f"/{pattern}/", tail[1:], text)
    if len(pattern) > MAX_REGEX_LENGTH:
        return LineResult(Outcome.MALFORMED, reason=f"regex longer than {MAX_REGEX_LENGTH} characters")
    problem = regex_problem(pattern)
    if problem:
        return LineResult(Outcome.MALFORMED, reason=problem)
    cat = category(Scope.EXACT, allow=allow, important=important)
    return LineResult(Outcome.BADFILTER if badfilter else Outcome.REGEX, cat, pattern=pattern)


def _glob_regex(body: str, start: str, end: bool) -> str:
    return start + ".*".join(re.escape(part) for part in body.split("*")) + ("$" if end else "")


def _parse_adblock(
    token: str, allow_list: bool, plain_scope: Scope, raw_modifiers: str | None = None, line_text: str = ""
) -> LineResult:
    """An adblock rule; `raw_modifiers`: the modifier text as written, when `token` is only the pattern."""
    allow = allow_list
    body = token
    if body.startswith("@@"):
        allow = True
        body = body[2:]
    if raw_modifiers is None:
        split = _split_modifiers(body)
        if split is None:
            return LineResult(Outcome.SKIPPED, reason="url rule (path or query part)")
        body, mods = split
    else:
        mods = [name for name, _ in modifiers.split_modifiers(raw_modifiers)]
    important, badfilter, skip = _apply_modifiers(mods)
    if skip:
        return LineResult(Outcome.SKIPPED, reason=skip)
    pattern_text = ("@@" if token.startswith("@@") else "") + body
    if body.endswith("/*") and not body.endswith("//*"):
        # ||example.org/* : every path of the host, which for DNS is the host.
        body = body[:-2]
        if not body.endswith(("^", "|")):
            body += "^"
    side = raw_modifiers is not None and bool(DNS_MODIFIERS.intersection(m.lstrip("~") for m in mods))
    if side and body.strip("|^") in ("*", ""):
        # *$denyallow=..., ||*^$client=..., $dnstype=AAAA,...: every name.
        everything = LineResult(Outcome.RULE, category(Scope.SUFFIX, allow=allow, important=important))
        return _side_result(everything, pattern_text, raw_modifiers or "", line_text)
    # Where the pattern is anchored: at a label boundary (||), at the start of the host name (|, ://,
    # scheme://) or nowhere (bare); the bare form is a plain entry unless it carries adblock markers.
    if body.startswith("||"):
        anchor, body = "domain", body[2:]
    elif match := _SCHEME.match(body):
        anchor, body = "start", body[match.end() :]
    elif body.startswith("|"):
        anchor, body = "start", body[1:]
    elif body.startswith("://"):
        anchor, body = "start", body[3:]
    elif body.startswith("//"):
        anchor, body = "start", body[2:]
    else:
        anchor = "none"
    end = False
    if body.endswith("^|"):
        body, end = body[:-2], True
    elif body.endswith(("^", "|")):
        body, end = body[:-1], True
    if not body.strip(".*"):
        return LineResult(Outcome.MALFORMED, reason="empty name")
    if any(c in _URL_CHARS or c == "^" or c == "|" for c in body):
        return LineResult(Outcome.SKIPPED, reason="url rule (path or query part)")
    if "." in body and all(c in "0123456789.*" for c in body) and body.strip("*."):
        return LineResult(Outcome.SKIPPED, reason="ip address rule (filters answers, not names)")
    marked = anchor != "none" or end or token.startswith("@@") or bool(mods)
    result = _adblock_pattern(body, anchor, end, marked, plain_scope, allow, important)
    if side and result.outcome in (Outcome.RULE, Outcome.REGEX):
        return _side_result(result, pattern_text, raw_modifiers or "", line_text)
    if badfilter and result.outcome in (Outcome.RULE, Outcome.REGEX):
        return LineResult(Outcome.BADFILTER, result.category, result.names, result.pattern)
    return result


def _side_result(pattern: LineResult, pattern_text: str, raw_modifiers: str, line_text: str) -> LineResult:
    """A rule with DNS modifiers (`pattern`: its names or regex, parsed as for a plain rule)."""
    cat = pattern.category
    fields: dict[str, object] = {}
    shown: list[str] = []
    badfilter = False
    try:
        for name, value in modifiers.split_modifiers(raw_modifiers):
            bare = name.lstrip("~")
            if bare == "badfilter":
                badfilter = True
                continue
            shown.append(f"{name}={value}" if value else name)
            if bare == "important":
                continue
            if name.startswith("~"):
                raise ModifierError(f"${bare} cannot be negated")
            if bare == "dnstype":
                fields["dnstypes"], fields["not_dnstypes"] = modifiers.parse_dnstypes(value)
            elif bare == "client":
                fields["clients_negated"], fields["clients"] = modifiers.parse_client_values(value)
            elif bare == "ctag":
                fields["ctags"], fields["not_ctags"] = modifiers.parse_tags(value)
            elif bare == "denyallow":
                if pattern.pattern:
                    raise ModifierError("$denyallow on a regex rule")
                domains = []
                for negated, domain in modifiers.split_values(value, "denyallow"):
                    folded = canonical_name(domain)
                    if negated or folded is None:
                        raise ModifierError(f"bad $denyallow domain {excerpt(domain)}")
                    domains.append(folded)
                fields["denyallow"] = tuple(domains)
            elif bare == "dnsrewrite":
                if value:
                    fields["rewrite"] = modifiers.parse_rewrite(value)
                elif category_allow(cat):
                    fields["rewrite_all"] = True
                else:
                    raise ModifierError("$dnsrewrite without a value")
    except (ModifierError, UnicodeError) as exc:
        return LineResult(Outcome.MALFORMED, reason=str(exc) or "bad modifier value")
    text = pattern_text + "$" + ",".join(sorted(shown))
    side = SideRule(
        text,
        allow=category_allow(cat),
        important=category_important(cat),
        scope=category_scope(cat),
        names=pattern.names,
        pattern=pattern.pattern,
        line_text=line_text,
        **fields,  # type: ignore[arg-type]
    )
    outcome = Outcome.BADFILTER if badfilter else Outcome.SIDE
    return LineResult(outcome, cat, pattern.names, pattern.pattern, side=side)


def _adblock_pattern(
    body: str, anchor: str, end: bool, marked: bool, plain_scope: Scope, allow: bool, important: bool
) -> LineResult:
    if "*" in body:
        rest = body[2:]
        if body.startswith("*.") and "*" not in rest and not rest.endswith("."):
            # *.x without a separator is the wildcard-list convention (apex and subdomains, as oisd's and
            # blocky's *.example.com); with a separator or an anchor it is adblock: subdomains only.
            scope = Scope.SUBDOMAINS if (end or anchor != "none") else Scope.SUFFIX
            return _name_result(rest, category(scope, allow=allow, important=important))
        return _glob_rule(body, anchor, end, marked, allow, important)
    if body.endswith(".") and not end:
        # ||ads. and ://example. match names that begin with these labels, under any suffix.
        return _glob_rule(body, anchor, end, marked, allow, important)
    if anchor == "domain":
        scope = Scope.SUFFIX
    elif anchor == "start":
        scope = Scope.EXACT
    elif body.startswith("."):
        body = body[1:]
        scope = Scope.SUBDOMAINS
    elif end:
        # A bare name^ is unanchored in adblock (it also matches "xname"); label-bound is what list
        # authors mean for DNS, so it is read like ||name^.
        scope = Scope.SUFFIX
    else:
        scope = plain_scope
    return _name_result(body, category(scope, allow=allow, important=important))


def _glob_rule(body: str, anchor: str, end: bool, marked: bool, allow: bool, important: bool) -> LineResult:
    if not body.isascii():
        return LineResult(Outcome.MALFORMED, reason="internationalized name in a wildcard pattern")
    if any(c not in _NAME_CHARSET and c != "*" for c in body):
        return LineResult(Outcome.MALFORMED, reason="invalid character in wildcard pattern")
    if anchor == "domain":
        start = r"(?:^|\.)"
    elif anchor == "start" or not marked:
        start = "^"
    else:
        start = ""
    # An unmarked plain line with * (ads*.example.com) is a whole-name glob.
    pattern = _glob_regex(body, start, end or not marked)
    # Every '*' is a '.*': a long run of them is within RE2's grammar but over its size limit.
    problem = regex_problem(pattern)
    if problem:
        return LineResult(Outcome.MALFORMED, reason=problem)
    cat = category(Scope.EXACT, allow=allow, important=important)
    return LineResult(Outcome.REGEX, cat, pattern=pattern)
