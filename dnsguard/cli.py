"""Command line: parses arguments, loads configuration, and hands over to the daemons."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dnsguard import __version__
from dnsguard.app.build_info import VersionAction
from dnsguard.errors import ConfigError, DnsguardError, NotAvailableError, PrivilegeError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a program that a closed pipe stopped (as `head` does to coreutils)."""

Handler = Callable[[argparse.Namespace], int]


def _not_available(name: str) -> Handler:  # kept for commands that are registered before they are built
    def handler(args: argparse.Namespace) -> int:
        raise NotAvailableError(f"'dnsguard {name}' is not available yet in dnsguard {__version__}")

    return handler


def _keygen(args: argparse.Namespace) -> int:
    from dnsguard.wireguard.keys import generate_preshared_key, generate_private_key

    print(generate_preshared_key() if args.preshared else generate_private_key())
    return EXIT_OK


def _pubkey(args: argparse.Namespace) -> int:
    from dnsguard.wireguard.keys import public_key

    private = sys.stdin.readline().strip()
    if not private:
        raise ConfigError("no private key on standard input")
    print(public_key(private))
    return EXIT_OK


def _server(args: argparse.Namespace) -> int:
    _require_net_admin("server")
    aead = _tune_aead()  # before the import below loads libcrypto
    from dnsguard.app.server import run_server

    return run_server(args.config, startup_notes=[aead])


def _up(args: argparse.Namespace) -> int:
    _require_net_admin("up")
    aead = _tune_aead()  # before the import below loads libcrypto
    from dnsguard.app.client import run_client

    return run_client(args.config, startup_notes=[aead])


def _tune_aead() -> str:
    from dnsguard.app.aead_tuning import tune_aead

    return tune_aead().describe()


def _down(args: argparse.Namespace) -> int:
    from dnsguard.app.client import run_down

    _require_net_admin("down")
    return run_down(args.config, args.interface)


def _status(args: argparse.Namespace) -> int:
    import json

    from dnsguard.app.remote import api_request

    config_path = args.config
    if config_path is None:
        # A client records its configuration file in its state file: `dnsguard status` finds its API;
        # a server or a resolver is found through $DNSGUARD_CONFIG or the default configuration file.
        from dnsguard.app.client import read_status
        from dnsguard.app.remote import daemon_config

        try:
            config_path = str(read_status(args.interface)["config"])
        except (DnsguardError, KeyError) as exc:
            config_path = daemon_config(None)
            if not os.path.exists(config_path):
                raise DnsguardError(
                    f"{exc}; for a server or a resolver, give its configuration with -c"
                ) from None
    status = api_request(config_path, "GET", "/api/status")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print("\n".join(status_lines(status)))
    return EXIT_OK


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min ago"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def status_lines(status: dict[str, Any]) -> list[str]:
    """`dnsguard status` for a person: the live answer of GET /api/status, times on the wall clock."""
    lines = [
        f"{status['kind']} (dnsguard {status['version']}, pid {status['pid']}), "
        f"up since {status.get('started_time', '?')} ({_ago(status.get('uptime_seconds'))})",
        f"config:     {status['config']}",
    ]
    reloads = status.get("reloads", {})
    if reloads.get("success") or reloads.get("failure"):
        line = f"reloads:    {reloads.get('success', 0)} ok, {reloads.get('failure', 0)} failed"
        if reloads.get("last_error"):
            line += f" (last error: {reloads['last_error']})"
        lines.append(line)
    connection = status.get("connection")
    if connection is not None:
        handshake = connection.get("last_handshake_time")
        when = f"{handshake} ({_ago(connection.get('last_handshake_ago_seconds'))})" if handshake else "never"
        reconnects = ", ".join(
            f"{cause} {count}" for cause, count in connection["reconnects"].items() if count
        )
        lines.append(f"connection: {connection['state']}, last handshake {when}")
        lines.append(f"reconnects: {reconnects or 'none'}")
    tunnel = status.get("tunnel")
    if tunnel is not None:
        lines.append(
            f"tunnel:     {tunnel['interface']}, received {_bytes(tunnel['rx_bytes'])}, "
            f"sent {_bytes(tunnel['tx_bytes'])}"
        )
        for peer in tunnel["peers"]:
            handshake = peer.get("last_handshake_time")
            when = f"{handshake} ({_ago(peer.get('last_handshake_ago_seconds'))})" if handshake else "never"
            lines.append(
                f"  peer {peer['name'] or peer['public_key']}: endpoint {peer['endpoint'] or '-'}, "
                f"handshake {when}, received {_bytes(peer['rx_bytes'])}, sent {_bytes(peer['tx_bytes'])}"
            )
    dns = status.get("dns")
    if dns is not None:
        blocking = dns["blocking"]
        until = blocking["paused_until"]
        state = "on" if blocking["enabled"] else f"paused until {_local_time(until) if until else 'resumed'}"
        queries = ", ".join(f"{result} {count}" for result, count in sorted(dns["queries"].items()))
        lines.append(f"blocking:   {state}")
        lines.append(f"queries:    {queries or 'none yet'}")
        for upstream in dns["upstreams"]:
            latency = upstream["latency_ms"]
            lines.append(
                f"  upstream {upstream['name']}: {upstream['queries']} queries, "
                f"{upstream['failures']} failures"
                + (f", {latency:.1f} ms" if latency is not None else "")
                + (f", last error: {upstream['last_error']}" if upstream["last_error"] else "")
            )
    from dnsguard.app.lan_tools import client_status_lines

    lines.extend(client_status_lines(status))
    return lines


def _resolve(args: argparse.Namespace) -> int:
    from dnsguard.app.resolve import run_resolve

    return run_resolve(args.config)


def _check(args: argparse.Namespace) -> int:
    """Validate as the daemons do (load_config is their one path), then build the lists as a start would.

    Every error of the file is printed, one line each, and the exit code is 2. URL sources are not
    downloaded here; their cached copies are used when present.
    """
    from dnsguard.app.lists import build_sync, cached_downloads
    from dnsguard.config import check_startable, load_config, upstream_servers
    from dnsguard.errors import ConfigErrors
    from dnsguard.policy.engine import Policy

    try:
        config = load_config(args.config)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"dnsguard: {error}", file=sys.stderr)
        return EXIT_USAGE
    check_startable(config, args.config)
    built = build_sync(config, cached_downloads(config))
    Policy(config, built.matcher)
    print(f"{args.config}: configuration is valid")
    for warning in config.warnings:
        print(f"  warning: {warning}")
    for report in built.sources:
        line = f"  list {report.list_name}: {report.location}: {report.rules} rules"
        if report.malformed:
            line += f", {report.malformed} malformed lines"
        if report.error:
            line += f" ({report.status}: {report.error})"
        print(line)
        for example in report.examples[:3]:
            print(f"    {example}")
    groups = ", ".join(config.groups) or "none (default: no filtering)"
    upstreams = upstream_servers(config)
    source = "" if config.upstreams.servers or not upstreams else " (from the tunnel's DNS)"
    print(f"  groups: {groups}; upstreams: {', '.join(upstreams) or 'none'}{source}")
    if config.tunnel is not None:
        addresses = ", ".join(config.tunnel.address) or "none"
        print(f"  tunnel: {len(config.tunnel.peers)} peers, addresses {addresses}")
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from dnsguard.app.tools import run_explain

    return run_explain(args.config, args.name, args.client, args.type)


def _lists(args: argparse.Namespace) -> int:
    from dnsguard.app.tools import run_lists_update

    return run_lists_update(args.config)


def _pause(args: argparse.Namespace) -> int:
    from dnsguard.app.remote import api_request

    body: dict[str, Any] = {"minutes": args.minutes}  # None: until resumed
    if args.group is not None:
        body["group"] = args.group
    state = api_request(args.config, "POST", "/api/blocking/pause", body=body)
    if args.group is not None:
        state = state["groups"][args.group]
    until = state["paused_until"]
    what = "blocking" if args.group is None else f"blocking for group {args.group}"
    print(f"{what} paused until {_local_time(until) if until else 'resumed'}")
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    from dnsguard.app.remote import api_request

    api_request(
        args.config, "POST", "/api/blocking/resume", body={"group": args.group} if args.group else None
    )
    print("blocking resumed" + (f" for group {args.group}" if args.group else ""))
    return EXIT_OK


def _rule(args: argparse.Namespace) -> int:
    from dnsguard.app.remote import api_request

    body = {"action": args.command, "name": args.name}
    answer = api_request(args.config, "POST", "/api/rules", body=body)
    done = {"allow": "allowed", "block": "blocked"}[args.command]
    print(
        f"{answer['name']} {done} for every group"
        if answer["changed"]
        else f"{answer['name']} was already {done}"
    )
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    from dnsguard.app.remote import api_request

    api_request(args.config, "POST", "/api/reload", timeout=120.0)
    print("configuration and lists reloaded")
    return EXIT_OK


def _queries(args: argparse.Namespace) -> int:
    from dnsguard.app.querylog_tools import run_queries

    filters = {key: getattr(args, key) for key in ("limit", "client", "result", "name", "qtype", "before")}
    filters["list"] = args.list_name
    return run_queries(args.config, filters, args.since)


def _top(args: argparse.Namespace) -> int:
    from dnsguard.app.querylog_tools import run_top

    return run_top(args.config, args.window)


def _dhcp_config(args: argparse.Namespace) -> int:
    from dnsguard.app.lan_tools import run_dhcp_config

    return run_dhcp_config(args.config, args.output)


def _clients(args: argparse.Namespace) -> int:
    from dnsguard.app.lan_tools import run_clients

    return run_clients(args.config)


def _local_time(timestamp: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(timestamp))


def _require_net_admin(command: str) -> None:
    from dnsguard.net.capabilities import have_net_admin

    if not have_net_admin():
        raise PrivilegeError(f"'dnsguard {command}' changes interfaces and routes and needs CAP_NET_ADMIN")


def _demo(args: argparse.Namespace) -> int:
    from dnsguard.demo import run_demo

    return run_demo(keep=args.keep)


def _add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "-c",
        "--config",
        required=required,
        metavar="FILE",
        help="YAML configuration (or a wg-quick .conf for the tunnel)",
    )


def _add_daemon_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="the running daemon's configuration (default: $DNSGUARD_CONFIG or /etc/dnsguard/dnsguard.yaml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="dnsguard",
        description="A DNS-filtering tunnel: WireGuard-compatible VPN with blocklists and per-client policy.",
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        return command

    up = add(
        "up",
        "bring up the full-tunnel client (TUN, routes, DNS filtering, kill switch)",
        _up,
    )
    _add_config(up)
    down = add("down", "stop a running client and remove everything 'dnsguard up' added", _down)
    _add_config(down, required=False)
    down.add_argument("--interface", default="dg0", help="tunnel interface when no config is given")
    server = add(
        "server",
        "run the VPN server (many peers, NAT, DNS filtering for stock WireGuard apps)",
        _server,
    )
    _add_config(server)
    resolve = add(
        "resolve",
        "serve the filtering DNS resolver on the sockets named in the config",
        _resolve,
    )
    _add_config(resolve)
    check = add(
        "check",
        "validate a configuration as a daemon start would (exit 0 when valid, 2 with one line per error)",
        _check,
    )
    _add_config(check)
    explain = add(
        "explain",
        "print the verdict for a name and the rule that decided it, or for an address: would the firewall"
        " fed by DNS refuse a new connection to it, and why",
        _explain,
    )
    explain.add_argument("name", metavar="NAME|ADDRESS")
    explain.add_argument(
        "--client", metavar="IP|MAC", help="evaluate the policy of this client address or MAC address"
    )
    explain.add_argument(
        "--type", default="A", metavar="TYPE", help="the query type asked (A, AAAA, HTTPS, TXT...; default A)"
    )
    _add_config(explain)
    keygen = add("keygen", "print a new private key (same format as 'wg genkey')", _keygen)
    keygen.add_argument("--preshared", action="store_true", help="a preshared key instead ('wg genpsk')")
    add("pubkey", "read a private key on stdin, print its public key (as 'wg pubkey')", _pubkey)
    lists = add("lists", "download list sources ('update') into the cache", _lists)
    lists.add_argument("action", choices=["update"])
    _add_config(lists)
    pause = add("pause", "pause blocking in a running daemon for MINUTES, or until resumed", _pause)
    pause.add_argument("minutes", type=float, nargs="?")
    pause.add_argument("--group", help="pause only this group's clients")
    _add_daemon_config(pause)
    resume = add("resume", "resume blocking in a running daemon (every pause, or one group's)", _resume)
    resume.add_argument("--group", help="end only this group's pause")
    _add_daemon_config(resume)
    for action in ("allow", "block"):
        rule = add(action, f"{action} NAME and its subdomains for every group of a running daemon", _rule)
        rule.add_argument("name")
        _add_daemon_config(rule)
    reload = add("reload", "make a running daemon re-read its configuration and lists", _reload)
    _add_daemon_config(reload)
    queries = add("queries", "print a running daemon's recent queries, oldest first", _queries)
    queries.add_argument("--limit", type=int, default=50)
    queries.add_argument("--client", metavar="IP|NAME")
    queries.add_argument(
        "--result", choices=["blocked", "allowed", "cached", "rewritten", "refused", "failed", "stale"]
    )
    queries.add_argument("--name", help="only names containing this text")
    queries.add_argument(
        "--qtype", metavar="TYPE", help="only this query type (A, AAAA, HTTPS... or a number)"
    )
    queries.add_argument("--list", dest="list_name", metavar="LIST", help="only queries this list blocked")
    queries.add_argument("--since", metavar="DURATION", help="only the last DURATION (e.g. 15m, 2h, 1d)")
    queries.add_argument("--before", type=int, metavar="ID", help="the next older page (printed at the end)")
    _add_daemon_config(queries)
    top = add(
        "top", "print a running daemon's top names, blocked names and clients (lasting query log)", _top
    )
    top.add_argument("--window", choices=["1h", "24h", "7d"], default="24h")
    _add_daemon_config(top)
    status = add(
        "status", "show the live state of a running daemon (up, server or resolve) through its API", _status
    )
    _add_config(status, required=False)
    status.add_argument(
        "--interface", default="dg0", help="without -c: the client running this tunnel interface"
    )
    status.add_argument("--json", action="store_true", help="print the API's JSON answer")
    dhcp_config = add("dhcp-config", "print the dnsmasq configuration of the dhcp: section", _dhcp_config)
    dhcp_config.add_argument("-o", "--output", metavar="FILE", help="write it to FILE (atomically) instead")
    _add_config(dhcp_config)
    _add_config(
        add("clients", "list a running daemon's clients with their names (through its API)", _clients)
    )
    demo = add("demo", "build a lab of network namespaces and run dnsguard in it (needs root)", _demo)
    demo.add_argument("--keep", action="store_true", help="wait for Enter before tearing the lab down")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dnsguard` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        code = handler(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught below
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (NotAvailableError, PrivilegeError, ConfigError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    except DnsguardError as exc:
        _error(str(exc))
        return EXIT_FAILURE
    except OSError as exc:
        # An expected failure of the system (a file, a socket) that no layer below mapped: one line.
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr closed too: nobody to tell
        print(f"dnsguard: {message}", file=sys.stderr)


def _quiet_stdout() -> None:
    """The reader of our output went away (`dnsguard explain ... | head`): stop writing, say nothing.

    Python flushes stdout once more at exit; pointing the descriptor at /dev/null turns that flush
    into a no-op instead of a second BrokenPipeError printed on stderr.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
