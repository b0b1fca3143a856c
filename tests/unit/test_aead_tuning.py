"""The tunnel daemons' choice of OpenSSL's ChaCha20-Poly1305 code (app/aead_tuning.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dnsguard.app.aead_tuning import OPENSSL_CAPS, WITHOUT_AVX512, probe_seal_time, tune_aead

AVX512 = {"sse2", "avx2", "avx512f"}


def timings(with_avx512: float | None, without_avx512: float | None):
    asked: list[str | None] = []

    def probe(caps: str | None) -> float | None:
        asked.append(caps)
        return with_avx512 if caps is None else without_avx512

    return probe, asked


def test_avx512_is_masked_when_the_seal_is_clearly_faster_without_it() -> None:
    environ: dict[str, str] = {}
    probe, asked = timings(4.0e-6, 1.6e-6)
    choice = tune_aead(environ, cpu_flags=lambda: AVX512, probe=probe)
    assert environ == {OPENSSL_CAPS: WITHOUT_AVX512}
    assert choice.caps == WITHOUT_AVX512
    assert asked == [None, WITHOUT_AVX512]
    assert "4.00 µs" in choice.describe() and "1.60 µs" in choice.describe()


@pytest.mark.parametrize("without_avx512", [1.0e-6, 0.95e-6, 1.3e-6])
def test_avx512_is_kept_when_masking_it_gains_little_or_loses(without_avx512: float) -> None:
    environ: dict[str, str] = {}
    probe, _ = timings(1.0e-6, without_avx512)
    choice = tune_aead(environ, cpu_flags=lambda: AVX512, probe=probe)
    assert environ == {}
    assert choice.caps is None and "AVX512F kept" in choice.reason


def test_a_cpu_without_avx512_costs_no_probe() -> None:
    environ: dict[str, str] = {}
    probe, asked = timings(1.0, 1.0)
    choice = tune_aead(environ, cpu_flags=lambda: {"sse2", "avx2"}, probe=probe)
    assert asked == [] and environ == {} and choice.caps is None


def test_the_operators_own_setting_is_kept_and_nothing_is_probed() -> None:
    environ = {OPENSSL_CAPS: "~0x200000000000000"}
    probe, asked = timings(4.0e-6, 1.0e-6)
    choice = tune_aead(environ, cpu_flags=lambda: AVX512, probe=probe)
    assert asked == [] and environ == {OPENSSL_CAPS: "~0x200000000000000"}
    assert choice.caps == "~0x200000000000000" and "as set in the environment" in choice.reason


@pytest.mark.parametrize("failed", ["with", "without"])
def test_a_failed_probe_leaves_openssls_choice(failed: str) -> None:
    environ: dict[str, str] = {}
    probe, _ = timings(None if failed == "with" else 4.0e-6, None if failed == "without" else 1.0e-6)
    choice = tune_aead(environ, cpu_flags=lambda: AVX512, probe=probe)
    assert environ == {} and choice.caps is None and "probe failed" in choice.reason


@pytest.mark.parametrize("caps", [None, WITHOUT_AVX512])
def test_the_probe_times_a_real_seal_in_a_child_process(caps: str | None) -> None:
    seconds = probe_seal_time(caps)
    assert seconds is not None and 0 < seconds < 0.01


def test_the_daemon_commands_choose_before_libcrypto_loads() -> None:
    # tune_aead sets $OPENSSL_ia32cap, which OpenSSL reads only as it loads: `dnsguard up` and
    # `dnsguard server` call it after importing the CLI and before importing the daemons.
    code = (
        "import sys, dnsguard.cli, dnsguard.net.capabilities, dnsguard.app.aead_tuning\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
