"""Which ChaCha20-Poly1305 code OpenSSL runs in the tunnel daemons, measured on this CPU at start.

OpenSSL picks its ChaCha20 and Poly1305 code once per process, when libcrypto loads, from the CPU's
features: its 512-bit AVX-512 code wherever the CPU reports AVX512F. On some CPUs that code is slower
than the 256-bit code for packet-sized messages (many Xeons lower their clock while they run 512-bit
instructions). On the 2-core Xeon (a virtual machine) of our benches, with the OpenSSL 4.1 inside
`cryptography` 51, a 1,420-byte `ChaCha20Poly1305.encrypt` took 2.1 µs with it and 1.55 µs without,
on either core, and bench/wireguard_core.py's best batches encrypted 356k-367k packets a second with
it against 492k-530k without. Debian's OpenSSL 3.0 on the same machine (`openssl speed -evp
chacha20-poly1305 -bytes 1420`) is not faster without it, so the choice is measured on the library
the daemon loads, not assumed from the CPU.

libcrypto reads the choice from $OPENSSL_ia32cap as it loads, so `tune_aead` runs before anything
imports `cryptography`: it times the seal of a 1,420-byte packet in two child processes, one as
OpenSSL would choose and one with AVX512F masked, and masks it in this process's environment only
when that is clearly faster. An $OPENSSL_ia32cap the operator set is kept as it is, and a CPU
without AVX512F costs no probe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

OPENSSL_CAPS = "OPENSSL_ia32cap"

WITHOUT_AVX512 = ":~0x10000"
"""$OPENSSL_ia32cap that keeps every detected feature but AVX512F (bit 16 of CPUID leaf 7's EBX, the
second word). OpenSSL's ChaCha20 on 512-bit registers and its IFMA Poly1305 need AVX512F; without it
OpenSSL runs ChaCha20 on 256-bit registers (its AVX512VL code) and Poly1305 on AVX2 (perf on the
bench machine: ChaCha20_16x, ChaCha20_avx512 and poly1305_blocks_vpmadd52 with it; ChaCha20_8xvl,
ChaCha20_avx512vl and poly1305_blocks_avx2 without)."""

CLEARLY_FASTER = 0.9
"""AVX512F is masked only when the seal without it takes under this fraction of the time with it.
Six probes on the machine above gave ratios of 0.71 to 0.85; a difference within the noise keeps
OpenSSL's own choice."""

PROBE_TIMEOUT = 10.0

PROBE = """
import time
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
aead, nonce, packet = ChaCha20Poly1305(bytes(32)), bytes(12), bytes(1420)
best = float("inf")
for _ in range(10):
    start = time.perf_counter()
    for _ in range(500):
        aead.encrypt(nonce, packet, None)
    best = min(best, time.perf_counter() - start)
print(best / 500)
"""
"""The child's measurement: the best of 10 runs of 500 seals, in seconds per seal (20 to 40 ms). The
first few thousand seals of a process ran slower on one of the machine's cores, either way."""


@dataclass(frozen=True, slots=True)
class AeadChoice:
    caps: str | None
    """$OPENSSL_ia32cap as the daemon runs with it (None: unset, OpenSSL's own choice)."""
    reason: str

    def describe(self) -> str:
        return f"ChaCha20-Poly1305: {self.reason}"


Prober = Callable[[str | None], float | None]


def tune_aead(
    environ: MutableMapping[str, str] | None = None,
    *,
    cpu_flags: Callable[[], set[str]] | None = None,
    probe: Prober | None = None,
) -> AeadChoice:
    """Set $OPENSSL_ia32cap in `environ` (os.environ) where masking AVX512F seals faster; say why."""
    environ = os.environ if environ is None else environ
    if OPENSSL_CAPS in environ:
        caps = environ[OPENSSL_CAPS]
        return AeadChoice(caps, f"${OPENSSL_CAPS}={caps} as set in the environment")
    if "avx512f" not in (cpu_flags or cpu_flags_of_this_machine)():
        return AeadChoice(None, "OpenSSL's own code choice (the CPU has no AVX512F)")
    probe = probe or probe_seal_time
    with_avx512 = probe(None)
    without_avx512 = probe(WITHOUT_AVX512)
    if with_avx512 is None or without_avx512 is None:
        return AeadChoice(None, "OpenSSL's own code choice (the timing probe failed)")
    timings = (
        f"{with_avx512 * 1e6:.2f} µs a 1,420-byte seal with AVX-512, {without_avx512 * 1e6:.2f} µs without"
    )
    if without_avx512 < with_avx512 * CLEARLY_FASTER:
        environ[OPENSSL_CAPS] = WITHOUT_AVX512
        return AeadChoice(WITHOUT_AVX512, f"AVX512F masked (${OPENSSL_CAPS}={WITHOUT_AVX512}): {timings}")
    return AeadChoice(None, f"OpenSSL's own code choice, AVX512F kept: {timings}")


def cpu_flags_of_this_machine() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def probe_seal_time(caps: str | None) -> float | None:
    """Seconds per 1,420-byte seal in a child process whose libcrypto loads with `caps` (None: unset)."""
    env = {key: value for key, value in os.environ.items() if key != OPENSSL_CAPS}
    if caps is not None:
        env[OPENSSL_CAPS] = caps
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
        seconds = float(done.stdout.strip()) if done.returncode == 0 else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    return seconds if seconds is not None and seconds > 0 else None
