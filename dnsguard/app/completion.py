"""Bash completion for dnsguard, written from the argument parser so that it knows every command there is.

The committed script, deploy/bash-completion/dnsguard, is this module's output; a unit test generates it
again and compares. Regenerate:

    python -m dnsguard.app.completion > deploy/bash-completion/dnsguard

The script is plain bash 4 (associative arrays, compgen, compopt): it does not need the bash-completion
package's helpers, only its loader to find the file by the command's name. It completes commands (nested
ones too), each command's options, the choices of options and positionals that have them, and for -c
the files a configuration can be (YAML and wg-quick .conf, and folders to descend into).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

CONFIG_DESTS = {"config"}
"""Options whose value is a dnsguard configuration: completed with *.yaml, *.yml and *.conf files."""

FILE_METAVARS = {"FILE", "PATH", "DIR"}
"""Other options whose value is a path: completed with any file."""

TEMPLATE = """\
# bash completion for {prog}(8), generated from its argument parser by
# python -m dnsguard.app.completion; do not edit.

_{function}_config_files() {{
    # Folders to descend into, and the files a configuration can be: YAML and wg-quick .conf.
    local path
    compopt -o filenames 2>/dev/null
    while IFS= read -r path; do
        case $path in
            *.yaml | *.yml | *.conf) COMPREPLY+=("$path") ;;
            *) [[ -d $path ]] && COMPREPLY+=("$path") ;;
        esac
    done < <(compgen -f -- "$1")
}}

_{function}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=""
    ((COMP_CWORD > 0)) && prev=${{COMP_WORDS[COMP_CWORD - 1]}}
    # Keys are command paths ("{prog}", "{prog} lists", deeper for nested commands; bash allows no
    # empty key); values are space-separated words. Option lists are padded with spaces so that
    # " -c " matches whole words.
    local -A commands=({commands})
    local -A options=({options})
    local -A valued=({valued})
    local -A config_files=({config_files})
    local -A files=({files})
    local -A choices=({choices})
    local path={prog} word i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if ((skip)); then
            skip=0
        elif [[ $word == -* ]]; then
            [[ ${{valued[$path]}} == *" $word "* ]] && skip=1
        elif [[ " ${{commands[$path]}} " == *" $word "* ]]; then
            path="$path $word"
        fi
    done
    COMPREPLY=()
    if [[ -n $prev && ${{valued[$path]}} == *" $prev "* ]]; then
        if [[ ${{config_files[$path]}} == *" $prev "* ]]; then
            _{function}_config_files "$cur"
        elif [[ ${{files[$path]}} == *" $prev "* ]]; then
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        elif [[ -n ${{choices["$path $prev"]}} ]]; then
            mapfile -t COMPREPLY < <(compgen -W "${{choices["$path $prev"]}}" -- "$cur")
        fi
        return 0
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "${{options[$path]}}" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -W "${{commands[$path]}} ${{choices[$path]}}" -- "$cur")
    fi
    return 0
}}

complete -F _{function} {prog}
"""


def generate(parser: argparse.ArgumentParser) -> str:
    """The completion script for `parser` (dnsguard's, or any parser built the same way)."""
    commands: dict[str, list[str]] = {}
    options: dict[str, list[str]] = {}
    valued: dict[str, list[str]] = {}
    config_files: dict[str, list[str]] = {}
    files: dict[str, list[str]] = {}
    choices: dict[str, list[str]] = {}
    for path, command in _walk(parser.prog, parser):
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands[path] = [name for name in action.choices if not name.startswith("-")]
                continue
            if not action.option_strings:
                if action.choices is not None and path not in choices:
                    choices[path] = [str(choice) for choice in action.choices]
                continue
            options.setdefault(path, []).extend(action.option_strings)
            if action.nargs == 0:
                continue
            valued.setdefault(path, []).extend(action.option_strings)
            if action.dest in CONFIG_DESTS:
                config_files.setdefault(path, []).extend(action.option_strings)
            elif action.choices is not None:
                for option in action.option_strings:
                    choices[f"{path} {option}"] = [str(choice) for choice in action.choices]
            elif str(action.metavar).upper() in FILE_METAVARS:
                files.setdefault(path, []).extend(action.option_strings)
    return TEMPLATE.format(
        prog=parser.prog,
        function=parser.prog.replace("-", "_"),
        commands=_array(commands, padded=False),
        options=_array(options, padded=False),
        valued=_array(valued, padded=True),
        config_files=_array(config_files, padded=True),
        files=_array(files, padded=True),
        choices=_array(choices, padded=False),
    )


def _walk(path: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield from _walk(f"{path} {name}", command)


def _array(table: dict[str, list[str]], *, padded: bool) -> str:
    """The body of a bash associative array: one `[key]=value` line each, in the parser's order."""
    if not table:
        return ""
    entries = []
    for key, words in table.items():
        value = " ".join(words)
        entries.append(f"[{shlex.quote(key)}]={shlex.quote(f' {value} ' if padded else value)}")
    return "\n        " + "\n        ".join(entries) + "\n    "


def main() -> int:
    from dnsguard.cli import build_parser

    print(generate(build_parser()), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
