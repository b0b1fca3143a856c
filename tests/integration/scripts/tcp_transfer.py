"""One TCP transfer for lab tests: `listen|connect HOST PORT send SIZE|receive`; prints "bytes sha256".

The sender sends SIZE bytes from a seeded generator, so both ends can be compared by digest.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys


def main() -> int:
    mode, host, port, direction = sys.argv[1:5]
    if mode == "listen":
        server = socket.create_server((host, int(port)))
        server.settimeout(60)
        print("listening", flush=True)
        sock, _ = server.accept()
        server.close()
    else:
        sock = socket.create_connection((host, int(port)), timeout=30)
    sock.settimeout(60)
    digest = hashlib.sha256()
    total = 0
    if direction == "send":
        size = int(sys.argv[5])
        generator = random.Random(size)
        while total < size:
            chunk = generator.randbytes(min(1 << 18, size - total))
            sock.sendall(chunk)
            digest.update(chunk)
            total += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
    else:
        while data := sock.recv(1 << 20):
            digest.update(data)
            total += len(data)
    sock.close()
    print(total, digest.hexdigest(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
