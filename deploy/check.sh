#!/usr/bin/env bash
# Validate the operations files in deploy/ with every tool that is installed; a missing tool is
# reported as SKIP, not as a failure. Needs no root and no network, and changes nothing outside a
# temporary directory.
#   bash deploy/check.sh
# The same checks, plus the metric-name contract, run in the test suite: tests/unit/test_deploy.py.
set -uo pipefail
deploy=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$deploy")
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0

check() {  # check NAME COMMAND...: run, print PASS/FAIL with the output of a failure
    local name=$1
    shift
    if output=$("$@" 2>&1); then
        echo "PASS  $name"
    else
        echo "FAIL  $name"
        printf '%s\n' "$output" | sed 's/^/      /'
        failed=1
    fi
}
have() { command -v "$1" >/dev/null 2>&1 || { echo "SKIP  $2 ($1 not installed)"; return 1; }; }

check "dashboard JSON" "$python" -m json.tool "$deploy/grafana/dnsguard.json" /dev/null

if "$python" -c "import yamllint" 2>/dev/null; then
    check "yamllint" "$python" -m yamllint -s -c "$deploy/yamllint.yml" "$deploy"
elif have yamllint "yamllint"; then
    check "yamllint" yamllint -s -c "$deploy/yamllint.yml" "$deploy"
fi

if have promtool "promtool checks"; then
    check "promtool check config prometheus.yml" promtool check config "$deploy/prometheus/prometheus.yml"
    check "promtool check rules alerts.yml" promtool check rules "$deploy/prometheus/alerts.yml"
    check "promtool test rules alerts_test.yml" sh -c "cd '$deploy/prometheus' && promtool test rules alerts_test.yml"
    k8s_output=$(promtool check config "$deploy/prometheus/prometheus-kubernetes.yml" 2>&1)
    if [[ $k8s_output == *"kubernetes_sd_configs not found"* ]]; then
        echo "SKIP  promtool check config prometheus-kubernetes.yml (promtool built without Kubernetes discovery)"
    else
        check "promtool check config prometheus-kubernetes.yml" \
            promtool check config "$deploy/prometheus/prometheus-kubernetes.yml"
    fi
fi

if have systemd-analyze "systemd-analyze verify"; then
    # verify insists that ExecStart= is executable; stand in for install.sh's link when it is absent.
    binary=/usr/local/bin/dnsguard
    [ -x "$binary" ] && stand_in=$binary || stand_in=/bin/true
    for unit in "$deploy"/systemd/*.service; do
        sed "s#ExecStart=$binary#ExecStart=$stand_in#" "$unit" >"$scratch/$(basename "$unit")"
        # Any message about the unit (unknown key, bad value) counts as a failure, not only the exit code.
        check "systemd-analyze verify $(basename "$unit")" sh -c \
            "cd '$scratch' && out=\$(systemd-analyze verify '$scratch/$(basename "$unit")' 2>&1); rc=\$?; printf '%s' \"\$out\"; [ \$rc -eq 0 ] && [ -z \"\$out\" ]"
    done
fi
if have systemd-sysusers "systemd-sysusers --dry-run"; then
    mkdir -p "$scratch/root/etc"
    check "systemd-sysusers --dry-run" systemd-sysusers --dry-run --root="$scratch/root" \
        "$deploy/systemd/sysusers.d/dnsguard.conf"
fi

if have kubectl "kubectl kustomize"; then
    check "kubectl kustomize deploy/kubernetes" kubectl kustomize "$deploy/kubernetes"
fi

check "pytest tests/unit/test_deploy.py" "$python" -m pytest -q -p no:cacheprovider "$root/tests/unit/test_deploy.py"

exit $failed
