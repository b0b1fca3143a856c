"""The lab's 'internet': an authoritative DNS server and an HTTP server in one asyncio process.

DNS (UDP and TCP):
- explicit records of the test zone (``www.<zone>`` -> the HTTP server, ``cloaked.<zone>`` -> a CNAME
  to ``ads.tracker.example``, ``big.<zone>`` -> a TXT set too big for UDP, ``slow.<zone>`` -> answered
  after a second, ``whoami.<zone>`` -> TXT with the querying address), other names in the zone NXDOMAIN;
- every name outside the zone resolves to the HTTP server, so the lab behaves like a web where any
  allowed name can be fetched.

HTTP: ``/`` a short page, ``/bytes/N`` N deterministic bytes with their SHA-256 in a header,
``/whoami`` the client address, ``/dns-log`` the names the DNS server was asked (with the asking
address), so tests can prove where queries came from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import struct
from pathlib import Path

from aiohttp import web
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

from dnsguard.lab.netns import ADDRESSES

DEFAULT_TTL = 300


class AuthoritativeZone:
    """Answers for the lab: explicit zone records and a catch-all web."""

    def __init__(self, zone: str, http4: str, http6: str, dns4: str, ttl: int = DEFAULT_TTL) -> None:
        self.zone = zone.rstrip(".").lower()
        self.http4, self.http6, self.dns4, self.ttl = http4, http6, dns4, ttl
        self.log: list[tuple[str, str, str]] = []

    def records(self, name: str, source: str) -> tuple[list[tuple[str, object]], bool]:
        """The (type, rdata) records of a name, and whether the name exists."""
        z = self.zone
        if name == f"www.{z}" or name == z:
            return [("A", A(self.http4)), ("AAAA", AAAA(self.http6))], True
        if name == f"dns.{z}":
            return [("A", A(self.dns4))], True
        if name == f"cloaked.{z}":
            return [("CNAME", CNAME("ads.tracker.example."))], True
        if name == f"whoami.{z}":
            return [("TXT", TXT(source))], True
        if name == f"big.{z}":
            return [("TXT", TXT(f"record-{i:03d}-" + "x" * 40)) for i in range(40)], True
        if name == f"slow.{z}":
            return [("A", A(self.http4))], True
        if name.endswith("." + z):
            return [], False
        return [("A", A(self.http4)), ("AAAA", AAAA(self.http6))], True

    def answer(self, data: bytes, source: str) -> bytes | None:
        """The reply to one query, or None for garbage."""
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        reply = request.reply()
        reply.header.aa = 1
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        qtype = QTYPE[question.qtype]
        self.log.append((name, qtype, source))
        del self.log[:-5000]
        records, exists = self.records(name, source)
        cname = [r for r in records if r[0] == "CNAME"]
        if cname:
            reply.add_answer(RR(question.qname, QTYPE.CNAME, rdata=cname[0][1], ttl=self.ttl))
            target = str(cname[0][1]).rstrip(".")
            records, exists = self.records(target, source)
            owner = target + "."
        else:
            owner = str(question.qname)
        for rtype, rdata in records:
            if rtype == qtype or qtype == "ANY":
                reply.add_answer(RR(owner, getattr(QTYPE, rtype), rdata=rdata, ttl=self.ttl))
        if not exists:
            reply.header.rcode = RCODE.NXDOMAIN
        if not reply.rr:
            reply.add_auth(
                RR(
                    self.zone + ".",
                    QTYPE.SOA,
                    ttl=self.ttl,
                    rdata=SOA(f"ns.{self.zone}.", f"hostmaster.{self.zone}.", (1, 3600, 600, 86400, 60)),
                )
            )
        return bytes(reply.pack())

    def is_slow(self, data: bytes) -> bool:
        return f"slow.{self.zone}".encode() in data.lower().replace(b"\x04", b".")


class DnsUdp(asyncio.DatagramProtocol):
    def __init__(self, zone: AuthoritativeZone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.zone.answer(data, addr[0])
        if reply is None or self.transport is None:
            return
        if len(reply) > 512 and not _has_edns(data):
            reply = _truncate(reply)
        if self.zone.is_slow(data):
            asyncio.get_running_loop().call_later(1.0, self.transport.sendto, reply, addr)
        else:
            self.transport.sendto(reply, addr)


def _has_edns(data: bytes) -> bool:
    return len(data) >= 12 and struct.unpack_from("!H", data, 10)[0] > 0


def _truncate(reply: bytes) -> bytes:
    record = DNSRecord.parse(reply)
    record.rr = []
    record.header.tc = 1
    return bytes(record.pack())


async def serve_dns_tcp(
    zone: AuthoritativeZone, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    peer = writer.get_extra_info("peername")[0]
    with contextlib.suppress(Exception):
        while True:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(length)
            reply = zone.answer(data, peer)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    writer.close()


def http_app(zone: AuthoritativeZone) -> web.Application:
    async def index(request: web.Request) -> web.Response:
        return web.Response(text="dnsguard lab web server\n")

    async def payload(request: web.Request) -> web.Response:
        size = min(int(request.match_info["size"]), 1 << 30)
        body = (hashlib.sha256(b"dnsguard").digest() * (size // 32 + 1))[:size]
        return web.Response(body=body, headers={"X-SHA256": hashlib.sha256(body).hexdigest()})

    async def whoami(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.remote}\n")

    async def dns_log(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(zone.log), content_type="application/json")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/bytes/{size:\\d+}", payload)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/dns-log", dns_log)
    return app


async def serve(args: argparse.Namespace) -> None:
    zone = AuthoritativeZone(args.zone, ADDRESSES.http4, ADDRESSES.http6, ADDRESSES.dns4, args.ttl)
    loop = asyncio.get_running_loop()
    for address in args.dns:
        await loop.create_datagram_endpoint(lambda: DnsUdp(zone), local_addr=(address, 53))
        await asyncio.start_server(lambda r, w: serve_dns_tcp(zone, r, w), address, 53)
    runner = web.AppRunner(http_app(zone), access_log=None)
    await runner.setup()
    for address in args.http:
        await web.TCPSite(runner, address, 80).start()
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description="dnsguard lab DNS and HTTP servers")
    parser.add_argument("--dns", action="append", default=[], help="address to serve DNS on (port 53)")
    parser.add_argument("--http", action="append", default=[], help="address to serve HTTP on (port 80)")
    parser.add_argument("--zone", default=ADDRESSES.zone)
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL)
    parser.add_argument("--ready-file")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
