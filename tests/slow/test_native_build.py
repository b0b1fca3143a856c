"""The compiled data paths for real: mypyc and gcc build it from a copy of the package, a new process
loads it and answers with it, and an edit of one source sends that process back to the sources.

Slow (mypyc and gcc take about a minute), so it sits outside tests/unit. It needs no root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnsguard import native, native_build

pytestmark = pytest.mark.slow

PACKAGE = Path(native.__file__).resolve().parent

# Run in a new process from the copy: which data paths it took, where the resolver came from, a blocked
# name's answer through the UDP listener's own read and answer (`_one`) on a socket pair, where the
# WireGuard device came from, and whether a packet crossed two of them after their handshake.
PROBE = """
import socket, sys
import dnsguard
from dnsguard import native
from dnsguard.dns import resolver, wire
from dnsguard.net.dns_listeners import ListenerStats, UdpListener
from dnsguard.wireguard import device
from tests.unit.test_resolver import make, query
from tests.unit.test_wireguard_device import Lab, connected

print(native.state)
print(resolver.__file__)
core, _, _ = make()
ours = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ours.bind(("127.0.0.1", 0))
client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
client.settimeout(5)

class Answers:
    answer_now = core.answer_now

listener = UdpListener(ours, Answers(), ListenerStats(), batch=False)
client.sendto(query("x.ads.example"), ours.getsockname())
assert listener._one(0.0) == 1
reply = client.recv(512)
print(reply[3] & 15, len(reply))
client.sendto(b"\\x00", ours.getsockname())
assert listener._one(0.0) == 1
print(core.stats.malformed)
print(device.__file__)
lab = Lab()
sender, receiver = connected(lab)
packet = lab.send(sender, "100.64.0.2", b"through the compiled device")
print(receiver.received == [packet])
"""


def probe(root: Path) -> list[str]:
    env = {key: value for key, value in os.environ.items() if key != "DNSGUARD_NATIVE"}
    env["PYTHONPATH"] = f"{root}{os.pathsep}{Path(__file__).resolve().parents[2]}"
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


def test_a_real_build_loads_answers_and_steps_aside_for_an_edited_source(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    package = tmp_path / "dnsguard"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__", native.FOLDER_NAME))
    folder = native_build.build(package)
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        [native.MANIFEST_NAME]
        + [name + native.extension_suffix() for name in (*native.MODULES, native.SHARED_LIBRARY)]
    )

    state, origin, answer, malformed, device_origin, delivered = probe(tmp_path)
    assert state == "compiled"
    assert origin.startswith(str(folder)) and origin.endswith(native.extension_suffix())
    assert device_origin.startswith(str(folder)) and device_origin.endswith(native.extension_suffix())
    assert delivered == "True"
    assert answer.split()[0] == "0" and int(answer.split()[1]) > 12  # NOERROR, the blocked name's 0.0.0.0
    assert malformed != "{}"  # a one-byte datagram: counted, no traceback

    resolver_source = native.module_file(package, "dnsguard.dns.resolver")
    resolver_source.write_text(resolver_source.read_text() + "\n# an edit after the build\n")
    state, origin, answer, *_ = probe(tmp_path)
    assert state.startswith("interpreted: sources changed")
    assert origin == str(resolver_source)
    assert answer.split()[0] == "0"


def test_a_failed_compile_keeps_the_earlier_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "dnsguard"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__", native.FOLDER_NAME))
    folder = package / native.FOLDER_NAME
    folder.mkdir()
    (folder / native.MANIFEST_NAME).write_text("{}")
    # A source that mypyc refuses to compile (a float variable given an int).
    admission = native.module_file(package, "dnsguard.dns.admission")
    admission.write_text(admission.read_text() + "\n\ndef _broken() -> None:\n    x = 1.5\n    x = 'text'\n")
    with pytest.raises(native_build.BuildError, match="mypyc failed"):
        native_build.build(package)
    assert (folder / native.MANIFEST_NAME).read_text() == "{}"
    assert not (package / (native.FOLDER_NAME + ".new")).exists()
