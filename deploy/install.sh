#!/usr/bin/env bash
# Install dnsguard and everything its demo (default) or its tests (--test) need, on Debian/Ubuntu, as root.
#   bash deploy/install.sh          system tools for the demo, then dnsguard into .venv (+ /usr/local/bin link)
#   bash deploy/install.sh --test   also the test, interop and benchmark tools and the [test] extra
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:-}

need_root() { [ "$(id -u)" = 0 ] || { echo "install.sh: run as root (it installs system packages)" >&2; exit 2; }; }
need_root

# Tools the tunnel and the lab use at run time.
runtime_pkgs=(iproute2 nftables iputils-ping curl dnsutils procps kmod ca-certificates python3-venv)
# Peers and anchors for interop tests and benchmarks, capture tools for the leak tests, and the
# validators of deploy/ (promtool from prometheus, systemd-analyze from systemd), and a headless
# browser for the dashboard's lab test (chromium).
test_pkgs=(wireguard-tools wireguard-go dnsmasq-base unbound iperf3 dnsperf tcpdump openvpn prometheus systemd chromium)
# A DHCP client (udhcpc) and a router-advertisement reader (rdisc6) for the LAN onboarding test.
test_pkgs+=(udhcpc ndisc6)

pkgs=("${runtime_pkgs[@]}")
[ "$mode" = "--test" ] && pkgs+=("${test_pkgs[@]}")
# man and groff render the manual page in its test.
[ "$mode" = "--test" ] && pkgs+=(man-db groff-base)

missing=()
for pkg in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "install.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # unbound and the other servers are tools the lab runs in its own namespaces: their packages must
    # not start them in the host's namespace, so service starts are refused while installing.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
extras="fast,native"
[ "$mode" = "--test" ] && extras="fast,native,test"
"$here/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here[$extras]"
# The DNS and tunnel data paths compiled with mypyc (dnsguard/native.py); where they cannot be, dnsguard runs from
# source and this says why.
"$here/.venv/bin/python" -m dnsguard.native_build || echo "install.sh: continuing without the compiled data paths"
ln -sf "$here/.venv/bin/dnsguard" /usr/local/bin/dnsguard
# The manual page and bash completion beside the command, where man and bash-completion look.
install -D -m 0644 "$here/deploy/man/dnsguard.8" /usr/local/share/man/man8/dnsguard.8
install -D -m 0644 "$here/deploy/bash-completion/dnsguard" /usr/local/share/bash-completion/completions/dnsguard
echo "install.sh: $("$here/.venv/bin/dnsguard" --version) installed in $here/.venv"
