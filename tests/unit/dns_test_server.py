"""A scriptable DNS server on loopback for upstream tests: UDP, TCP, TLS and DoH, answering or misbehaving.

Tests flip attributes (``delay``, ``drop``, ``rcode``, ``truncate_udp``, ``spoof`` ...) and read ``log`` to
see what reached the server. Every socket binds 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from dnslib import QTYPE, RR, A, DNSRecord

LOOPBACK = "127.0.0.1"


@dataclass
class Seen:
    """One query as the server received it."""

    transport: str  # "udp", "tcp", "tls", "doh-post", "doh-get"
    query_id: int
    qname: str
    qtype: str


@dataclass
class ScriptedDnsServer:
    """Answers ``A`` queries with ``answer_ip`` unless told to misbehave."""

    answer_ip: str = "192.0.2.1"
    delay: float = 0.0  # before every reply
    delays: dict[str, float] = field(default_factory=dict)  # per query name (no trailing dot)
    drop: bool = False  # never reply
    drop_first: int = 0  # drop this many UDP queries, then reply
    rcode: int | None = None  # reply with this RCODE and no answer
    truncate_udp: bool = False  # UDP replies carry TC=1 and no answer; TCP replies are complete
    spoof: bool = False  # UDP: before the real reply, send one with a wrong ID and one with a wrong question
    close_after_reply: bool = False  # TCP: close the connection after each reply
    log: list[Seen] = field(default_factory=list)
    tcp_connections: int = 0
    tcp_closed: int = 0
    reply_order: list[str] = field(default_factory=list)
    port: int = 0
    _udp: asyncio.DatagramTransport | None = None
    _tcp: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    # ---- answers

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply for one query, or None to stay silent; records the query in ``log``."""
        request = DNSRecord.parse(wire)
        qname = str(request.q.qname).rstrip(".")
        self.log.append(Seen(transport, request.header.id, qname, QTYPE[request.q.qtype]))
        if self.drop:
            return None
        if transport == "udp" and self.drop_first > 0:
            self.drop_first -= 1
            return None
        reply = request.reply()
        if self.rcode is not None:
            reply.header.rcode = self.rcode
        elif transport == "udp" and self.truncate_udp:
            reply.header.tc = 1
        else:
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(self.answer_ip), ttl=60))
        return bytes(reply.pack())

    def delay_for(self, wire: bytes) -> float:
        qname = str(DNSRecord.parse(wire).q.qname).rstrip(".")
        return self.delays.get(qname, self.delay)

    # ---- lifecycle

    async def start(self, *, tls: ssl.SSLContext | None = None, udp: bool = True) -> ScriptedDnsServer:
        """Listen on one port for UDP and TCP (or TLS when a context is given)."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp_sock.bind((LOOPBACK, 0))
            port = udp_sock.getsockname()[1]
            tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp_sock.bind((LOOPBACK, port))
            except OSError:
                udp_sock.close()
                tcp_sock.close()
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self.port = port
        if udp:
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp_sock)
        else:
            udp_sock.close()
        self._tcp = await asyncio.start_server(self._serve_stream, sock=tcp_sock, ssl=tls)
        return self

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._writers):
            writer.close()
        # Let connection handlers see their EOF and end, rather than be cancelled when the loop closes.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- TCP / TLS: every frame answered in its own task, so replies leave in order of their delays

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        transport = "tls" if writer.get_extra_info("sslcontext") is not None else "tcp"
        try:
            while True:
                try:
                    header = await reader.readexactly(2)
                    wire = await reader.readexactly(struct.unpack("!H", header)[0])
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.spawn(self._answer_stream(wire, transport, writer))
        finally:
            self.tcp_closed += 1
            self._writers.discard(writer)
            self._handlers.discard(handler)
            writer.close()

    async def _answer_stream(self, wire: bytes, transport: str, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.delay_for(wire))
        reply = self.answer(wire, transport)
        if reply is None or writer.is_closing():
            return
        self.reply_order.append(str(DNSRecord.parse(wire).q.qname).rstrip("."))
        writer.write(struct.pack("!H", len(reply)) + reply)
        if self.close_after_reply:
            writer.close()


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: ScriptedDnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.spawn(self._reply(data, addr))

    async def _reply(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        server = self.server
        delay = server.delay_for(data)
        reply = server.answer(data, "udp")
        if reply is None:
            return
        if server.spoof:
            request = DNSRecord.parse(data)
            wrong_id = bytes([data[0] ^ 0x55, data[1]]) + reply[2:]
            self.transport.sendto(wrong_id, addr)
            other = DNSRecord.question("spoofed.invalid", "A")
            other.header.id = request.header.id
            forged = other.reply()
            forged.add_answer(RR("spoofed.invalid", QTYPE.A, rdata=A("203.0.113.66"), ttl=60))
            self.transport.sendto(bytes(forged.pack()), addr)
            # The right ID and question, but from another port: a connected client socket never sees it.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rogue:
                forged_reply = DNSRecord.parse(reply)
                forged_reply.rr = [RR(forged_reply.q.qname, QTYPE.A, rdata=A("203.0.113.99"), ttl=60)]
                rogue.sendto(bytes(forged_reply.pack()), addr)
            delay = max(delay, 0.05)
        await asyncio.sleep(delay)
        self.transport.sendto(reply, addr)


class DohTestServer:
    """DNS over HTTPS (RFC 8484) in front of a ScriptedDnsServer, on aiohttp.web with TLS."""

    def __init__(self, dns: ScriptedDnsServer, tls: ssl.SSLContext) -> None:
        self.dns = dns
        self.tls = tls
        self.port = 0
        self.wire_ids: list[int] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> DohTestServer:
        app = web.Application()
        app.router.add_post("/dns-query", self._post)
        app.router.add_get("/dns-query", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((LOOPBACK, 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, ssl_context=self.tls).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/dns-message":
            return web.Response(status=415)
        return await self._respond(await request.read(), "doh-post")

    async def _get(self, request: web.Request) -> web.StreamResponse:
        encoded = request.query.get("dns", "")
        wire = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        return await self._respond(wire, "doh-get")

    async def _respond(self, wire: bytes, transport: str) -> web.StreamResponse:
        self.wire_ids.append(struct.unpack_from("!H", wire)[0])
        await asyncio.sleep(self.dns.delay_for(wire))
        reply = self.dns.answer(wire, transport)
        if reply is None:
            await self._stopping.wait()  # "drop": hold the request until the server stops
            return web.Response(status=503)
        return web.Response(body=reply, content_type="application/dns-message")


# ---- TLS material: a throwaway CA and a server certificate for dns.test and 127.0.0.1


@dataclass
class TlsMaterial:
    """A CA file for clients and a server context for the test servers."""

    ca_file: Path
    server_context: ssl.SSLContext
    server_names: list[str | None] = field(default_factory=list)  # SNI of every handshake


def make_tls_material(directory: Path, server_name: str = "dns.test") -> TlsMaterial:
    """Generate a CA and a server certificate signed by it (EC P-256, valid for a day) into ``directory``."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dnsguard test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(server_name), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    material = TlsMaterial(ca_file, context)

    def record_sni(_sock: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext) -> None:
        material.server_names.append(server_name)

    context.sni_callback = record_sni
    return material
