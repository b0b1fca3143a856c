"""dnsguard(8), written from the argument parser so that it lists every command and option there is.

The committed page, deploy/man/dnsguard.8, is this module's output; a unit test generates it again and
compares, so a command added to the parser without regenerating the page fails the suite. Regenerate:

    python -m dnsguard.app.manpage > deploy/man/dnsguard.8

Only NAME, SYNOPSIS, the commands and their options come from the parser; the prose sections (files,
environment, examples) are written here, since the parser cannot know them.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from dnsguard import __version__

SECTION = 8
"""System administration: the daemons need root or CAP_NET_ADMIN."""

DESCRIPTION = (
    "dnsguard is a full-tunnel VPN that speaks WireGuard and answers every DNS query its devices make from "
    "blocklists and per-client policy before anything leaves the machine. It runs as a client (up), as a "
    "home gateway that routes and filters its LAN (up with lan-interfaces), as a server for stock "
    "WireGuard apps (server), or as the filtering resolver alone (resolve).",
    "The configuration is YAML (a wg-quick .conf is accepted for the tunnel). check runs the validation "
    "that every start and every reload runs; a bad file is reported as one file:line: key: problem line "
    "per error and exits 2. A running daemon reloads on SIGHUP and answers status, pause, resume and "
    "queries through its HTTP API.",
)

FILES = (
    (
        "/etc/dnsguard/dnsguard.yaml",
        "The configuration, given with -c: dnsguard reads no configuration that -c does not name. It holds "
        "private keys, so it is readable by root and group dnsguard only (mode 0640).",
    ),
    (
        "/etc/dnsguard/client.yaml, /etc/dnsguard/server.yaml, /etc/dnsguard/resolver.yaml",
        "The configurations that the systemd units dnsguard-client, dnsguard-server and dnsguard-resolver "
        "pass to up, server and resolve.",
    ),
    (
        "/var/cache/dnsguard/lists",
        "Downloaded list sources and compiled lists (loading.cache-dir, by default), so that a restart "
        "answers filtered at once.",
    ),
    (
        "/run/dnsguard",
        "State of running clients: what each changed in its network namespace, undone by down or by the "
        "next start after a crash, and what status reads.",
    ),
    (
        "dnsguard/_data in the installed package",
        "Sample configurations (config/), sample lists (blocklists/) and systemd units (deploy/systemd/); "
        "python3 -m dnsguard.config.shipped prints their paths.",
    ),
)

ENVIRONMENT = (
    ("DNSGUARD_RUN_DIR", "Folder of the clients' state files instead of /run/dnsguard."),
    (
        "DNSGUARD_CACHE_DIR",
        "Default of loading.cache-dir instead of /var/cache/dnsguard/lists, for a configuration that does "
        "not set it.",
    ),
)

EXAMPLES = (
    ("Validate a configuration as a start would:", "dnsguard check -c /etc/dnsguard/dnsguard.yaml"),
    ("Make a key pair:", "dnsguard keygen > client.key\ndnsguard pubkey < client.key"),
    (
        "Bring the full-tunnel client up, then down:",
        "dnsguard up -c /etc/dnsguard/client.yaml\ndnsguard down",
    ),
    (
        "Show which rule decides a name for one device:",
        "dnsguard explain ads.example --client 192.0.2.20 -c /etc/dnsguard/dnsguard.yaml",
    ),
    ("Pause blocking for ten minutes:", "dnsguard pause 10 -c /etc/dnsguard/dnsguard.yaml"),
    ("Watch the lab demo (as root; it builds network namespaces):", "dnsguard demo"),
)

SEE_ALSO = "wg(8), wg\\-quick(8), nft(8), ip(8), systemd.service(5)"


def generate(parser: argparse.ArgumentParser) -> str:
    """The whole page for `parser` (dnsguard's, or any parser built the same way)."""
    prog = parser.prog
    summary = (parser.description or prog).rstrip(".")
    lines = [
        '.\\" Generated from the argument parser by python -m dnsguard.app.manpage; do not edit.',
        f'.TH {prog.upper()} {SECTION} "" "{prog} {__version__}" "System Administration"',
        ".nh",  # no hyphenated names and paths
        ".ad l",
        ".SH NAME",
        f"{prog} \\- {_text(summary[0].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        *_synopsis(prog, parser),
    ]
    commands = list(_commands(prog, parser))
    for name, _help, _command in commands:
        lines += [".br", *_synopsis(name, _command)]
    lines += [".SH DESCRIPTION"]
    for paragraph in DESCRIPTION:
        lines += [".PP", _text(paragraph)]
    lines += [".SH OPTIONS", *_options(parser)]
    lines += [".SH COMMANDS"]
    for name, help_text, command in commands:
        lines += [f'.SS "{_text(name)}"', _text(_sentence(help_text))]
        lines += _options(command)
    lines += [".SH FILES"]
    for path, meaning in FILES:
        lines += [".TP", f".I {_text(path)}", _text(meaning)]
    lines += [".SH ENVIRONMENT"]
    for variable, meaning in ENVIRONMENT:
        lines += [".TP", f".B {variable}", _text(meaning)]
    lines += [".SH EXAMPLES"]
    for what, command_lines in EXAMPLES:
        lines += [".PP", _text(what), ".PP", ".nf", ".RS 4"]
        lines += [_text(line) for line in command_lines.splitlines()]
        lines += [".RE", ".fi"]
    lines += [".SH SEE ALSO", SEE_ALSO, ""]
    return "\n".join(lines)


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    """Every command of `parser`, nested ones as "lists update", in the parser's order."""
    prefix = parser.prog + " "
    return [name.removeprefix(prefix) for name, _, _ in _commands(parser.prog, parser)]


def _commands(
    prog: str, parser: argparse.ArgumentParser
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        # Commands added without help= have no entry here, so the help falls back to the description.
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        seen: set[int] = set()
        for name, command in action.choices.items():
            if id(command) in seen:  # an alias: the same parser under another name
                continue
            seen.add(id(command))
            full = f"{prog} {name}"
            yield full, helps.get(name) or command.description or "", command
            yield from _commands(full, command)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join(f"\\fB{_text(option)}\\fR" for option in action.option_strings)
            value = _value(action)
            head = f"{names} {value}" if value else names
        else:
            head = _value(action)
        lines += [".TP", head, _text(_sentence(_help(action)))]
    return lines


def _synopsis(name: str, parser: argparse.ArgumentParser) -> list[str]:
    words = [f"\\fB{_text(name)}\\fR"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            metavar = action.metavar if isinstance(action.metavar, str) else "COMMAND"
            words.append(f"\\fI{_text(metavar)}\\fR [\\fIOPTIONS\\fR]")
            continue
        if not action.option_strings:
            words.append(_value(action))
            continue
        word = f"\\fB{_text(action.option_strings[0])}\\fR"
        value = _value(action)
        if value:
            word += f" {value}"
        words.append(word if action.required else f"[{word}]")
    return [" ".join(words)]


def _value(action: argparse.Action) -> str:
    """How the option's value or the positional is written: a metavar, or its choices."""
    if action.nargs == 0:
        return ""
    if action.choices is not None and action.metavar is None:
        return "{" + ",".join(f"\\fB{_text(str(choice))}\\fR" for choice in action.choices) + "}"
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    value = f"\\fI{_text(str(metavar))}\\fR"
    if action.nargs in ("*", "?"):
        return f"[{value}]"
    if action.nargs == "+":
        return f"{value} ..."
    return value


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if text == argparse.SUPPRESS:
        return ""
    if "%" in text:
        # The expansion argparse itself does for --help (%(default)s and the like).
        text = argparse.HelpFormatter("")._expand_help(action)
    default = action.default
    if (
        action.option_strings
        and default not in (None, False, argparse.SUPPRESS)
        and "%(default)" not in (action.help or "")
    ):
        text = f"{_sentence(text)} Default: {default}"
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _text(text: str) -> str:
    """Roff-safe text: backslashes escaped, option dashes as \\-, no line read as a request."""
    text = text.replace("\\", "\\e")
    text = re.sub(r"(?<![\w])-", r"\\-", text)
    return "\\&" + text if text.startswith((".", "'")) else text


def main() -> int:
    from dnsguard.cli import build_parser

    print(generate(build_parser()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
