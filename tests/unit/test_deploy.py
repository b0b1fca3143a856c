"""The operations files in deploy/: units, container recipe, Kubernetes, Prometheus, Grafana.

Always runs: YAML/JSON parsing, the metric-name contract (deploy/METRICS.md) checked against every PromQL
expression in the alerts and the dashboard, security properties of the units and manifests, and the
Kubernetes server configuration loaded by `dnsguard check`. The external validators (promtool,
systemd-analyze, systemd-sysusers/tmpfiles, yamllint, kubectl kustomize) run when installed and are skipped
with the reason otherwise. Nothing here uses the network or changes the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dnsguard.json"
BINARY = "/usr/local/bin/dnsguard"
TIMEOUT = 15

# The metric contract, in the same spelling as deploy/METRICS.md: name -> type.
METRICS: dict[str, str] = {
    "dnsguard_dns_queries_total": "counter",
    "dnsguard_dns_blocked_total": "counter",
    "dnsguard_dns_upstream_duration_seconds": "histogram",
    "dnsguard_dns_upstream_queries_total": "counter",
    "dnsguard_dns_upstream_errors_total": "counter",
    "dnsguard_dns_cache_entries": "gauge",
    "dnsguard_firewall_connections_total": "counter",
    "dnsguard_firewall_addresses": "gauge",
    "dnsguard_firewall_updates_total": "counter",
    "dnsguard_dns_cache_hits_total": "counter",
    "dnsguard_dns_cache_misses_total": "counter",
    "dnsguard_dns_response_duration_seconds": "histogram",
    "dnsguard_dns_answers_total": "counter",
    "dnsguard_querylog_written_total": "counter",
    "dnsguard_querylog_dropped_total": "counter",
    "dnsguard_querylog_writer_restarts_total": "counter",
    "dnsguard_dns_malformed_total": "counter",
    "dnsguard_dns_refused_total": "counter",
    "dnsguard_dns_tcp_connections": "gauge",
    "dnsguard_dns_tcp_closed_total": "counter",
    "dnsguard_lists_entries": "gauge",
    "dnsguard_lists_last_update_timestamp_seconds": "gauge",
    "dnsguard_lists_update_failures_total": "counter",
    "dnsguard_tunnel_state": "gauge",
    "dnsguard_tunnel_bytes_total": "counter",
    "dnsguard_tunnel_packets_total": "counter",
    "dnsguard_tunnel_packets_dropped_total": "counter",
    "dnsguard_tunnel_queued_bytes": "gauge",
    "dnsguard_tunnel_ecn_marked_total": "counter",
    "dnsguard_tunnel_keep_warm_ticks_total": "counter",
    "dnsguard_tunnel_offloads": "gauge",
    "dnsguard_tunnel_offload_packets_total": "counter",
    "dnsguard_tunnel_handshakes_total": "counter",
    "dnsguard_tunnel_reconnects_total": "counter",
    "dnsguard_tunnel_last_handshake_timestamp_seconds": "gauge",
    "dnsguard_tunnel_peers": "gauge",
    "dnsguard_config_reload_total": "counter",
    "dnsguard_busy_poll_wakeups_total": "counter",
    "dnsguard_blocking_enabled": "gauge",
    "dnsguard_build_info": "gauge",
}


def series_names(metrics: dict[str, str]) -> set[str]:
    """Names a query may select: histograms only through their _bucket, _sum and _count series."""
    names = set()
    for name, kind in metrics.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


ALLOWED_SERIES = series_names(METRICS)
# Besides dnsguard's own metrics, a rule may only use Prometheus' scrape health series.
ALLOWED_FOREIGN = {"up"}

WIREGUARD_KEY = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?![A-Za-z0-9+/=])")

# -- PromQL: which metric names does an expression select? --------------------------------

_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed). Label names, function names,
    keywords, strings, durations and numbers are not metric names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range selectors and subqueries
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)  # Grafana variables
    text = _GROUPING.sub(" ", text)  # by/on/ignoring/group_* and their label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w(])(?!\s*\()", text):
        if match.group(1).lower() not in _KEYWORDS:
            names.add(match.group(1))
    return names


def test_promql_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = (
        'sum by (le, upstream) (rate(dnsguard_dns_upstream_duration_seconds_bucket{job=~"$job"}[5m]))'
        " / on (job) group_left sum(rate(x_total[$__rate_interval] offset 1h)) > bool 2 * 86400"
        ' and up{instance="a{b}"} unless time() - 1e3'
    )
    assert promql_metric_names(expr) == {"dnsguard_dns_upstream_duration_seconds_bucket", "x_total", "up"}
    assert promql_metric_names("topk(10, dnsguard_nope_total)") == {"dnsguard_nope_total"}


# -- helpers ------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted({*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")})


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a nested structure of dicts and lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (see deploy/README.md, Validation)")
    return path


def run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd, check=False)


def alert_rules() -> list[dict[str, Any]]:
    (doc,) = load_yaml(PROM / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and every annotation query."""
    board = dashboard()
    exprs = [
        (f"panel {panel.get('title')!r}", target["expr"])
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]
    exprs += [(f"annotation {a['name']!r}", a["expr"]) for a in board["annotations"]["list"] if a.get("expr")]
    return exprs


# -- YAML and JSON ------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml(path), f"{path} has no YAML document"


def test_yamllint() -> None:
    try:
        import yamllint  # noqa: F401

        argv = [sys.executable, "-m", "yamllint"]
    except ImportError:
        argv = [tool("yamllint")]
    result = run(*argv, "-s", "-c", str(DEPLOY / "yamllint.yml"), str(DEPLOY))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the metric contract ------------------------------------------------------------------


def test_metrics_md_matches_the_contract() -> None:
    rows = re.findall(r"^\| `(dnsguard_\w+)` \| (\w+) \|", (DEPLOY / "METRICS.md").read_text(), re.M)
    assert dict(rows) == METRICS
    assert len(rows) == len(METRICS), "a metric is listed twice in METRICS.md"


def test_dashboard_is_valid_and_uses_its_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] == "dnsguard"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_queries_use_only_contract_metrics() -> None:
    for where, expr in dashboard_exprs():
        unknown = promql_metric_names(expr) - ALLOWED_SERIES
        assert not unknown, f"{where} uses metrics outside deploy/METRICS.md: {sorted(unknown)}"


def test_dashboard_shows_every_metric() -> None:
    used = set().union(*(promql_metric_names(expr) for _, expr in dashboard_exprs()))
    for name, kind in METRICS.items():
        wanted = f"{name}_bucket" if kind == "histogram" else name
        assert wanted in used, f"no dashboard panel shows {name}"


def test_alert_rules_are_complete_and_use_only_contract_metrics() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names >= {
        "DnsguardTargetDown",
        "DnsguardTunnelDown",
        "DnsguardHandshakeStale",
        "DnsguardUpstreamErrors",
        "DnsguardListStale",
        "DnsguardConfigReloadFailed",
        "DnsguardHighDropRate",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
        unknown = promql_metric_names(rule["expr"]) - ALLOWED_SERIES - ALLOWED_FOREIGN
        assert not unknown, f"{rule['alert']} uses metrics outside deploy/METRICS.md: {sorted(unknown)}"


def test_scrape_jobs_match_what_rules_and_dashboard_select() -> None:
    (config,) = load_yaml(PROM / "prometheus.yml")
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"dnsguard-client", "dnsguard-server", "dnsguard-resolver"}
    for rule_file in config["rule_files"]:
        assert (PROM / rule_file).is_file()
    (k8s,) = load_yaml(PROM / "prometheus-kubernetes.yml")
    (job,) = k8s["scrape_configs"]
    assert {"target_label": "job", "replacement": "dnsguard-server"} in job["relabel_configs"]


# -- promtool -----------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(PROM / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    result = run(tool("promtool"), "test", "rules", "alerts_test.yml", cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config() -> None:
    result = run(tool("promtool"), "check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_kubernetes_config() -> None:
    result = run(tool("promtool"), "check", "config", str(PROM / "prometheus-kubernetes.yml"))
    if "kubernetes_sd_configs not found" in result.stdout + result.stderr:
        pytest.skip("this promtool is built without Kubernetes service discovery (Debian's package)")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_dashboard_queries(tmp_path: Path) -> None:
    promtool = tool("promtool")
    substitutes = {
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$__range": "1h",
        "$job": ".*",
        "$instance": ".*",
    }
    rules = []
    for i, (_, expr) in enumerate(dashboard_exprs()):
        for variable, value in substitutes.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query{i}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- systemd ------------------------------------------------------------------------------

UNIT_COMMANDS = {
    "dnsguard-client.service": f"{BINARY} up -c /etc/dnsguard/client.yaml",
    "dnsguard-server.service": f"{BINARY} server -c /etc/dnsguard/server.yaml",
    "dnsguard-resolver.service": f"{BINARY} resolve -c /etc/dnsguard/resolver.yaml",
}


def unit_settings(path: Path) -> dict[str, list[str]]:
    """'Section.Key' -> every value assigned, in order (systemd allows repeated keys)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def one(settings: dict[str, list[str]], key: str) -> str:
    values = [v for v in settings.get(key, []) if v]
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def words(settings: dict[str, list[str]], key: str) -> set[str]:
    return {word for value in settings.get(key, []) for word in value.split()}


@pytest.mark.parametrize("name", sorted(UNIT_COMMANDS))
def test_unit_least_privilege(name: str) -> None:
    s = unit_settings(UNITS / name)
    assert one(s, "Service.ExecStart") == UNIT_COMMANDS[name]
    assert one(s, "Service.Type") == "notify"
    assert one(s, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(s, "Service.Restart") == "on-failure"
    assert one(s, "Service.User") == "dnsguard"
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "dnsguard",
    }.items():
        assert one(s, f"Service.{key}") == value, key
    assert "dnsguard" in words(s, "Service.CacheDirectory")
    assert words(s, "Service.RestrictAddressFamilies") == {"AF_INET", "AF_INET6", "AF_NETLINK", "AF_UNIX"}
    assert "@system-service" in words(s, "Service.SystemCallFilter")
    bounding = words(s, "Service.CapabilityBoundingSet")
    assert bounding == words(s, "Service.AmbientCapabilities")
    assert "CAP_NET_RAW" not in bounding
    assert "CAP_NET_BIND_SERVICE" in bounding
    if name == "dnsguard-resolver.service":
        # No tunnel: no network administration and no TUN device.
        assert bounding == {"CAP_NET_BIND_SERVICE"}
        assert one(s, "Service.PrivateDevices") == "yes"
    else:
        assert "CAP_NET_ADMIN" in bounding
        assert one(s, "Service.DevicePolicy") == "closed"
        assert one(s, "Service.DeviceAllow") == "/dev/net/tun rw"
        # /proc/sys is read-only; the sysctls the daemon checks are set by a privileged ExecStartPre.
        assert one(s, "Service.ProtectKernelTunables") == "yes"
        assert any(line.startswith("+/usr/sbin/sysctl") for line in s["Service.ExecStartPre"])
    assert one(s, "Service.NotifyAccess") == "main"  # the daemons send READY=1


@pytest.mark.parametrize("name", sorted(UNIT_COMMANDS))
def test_unit_holds_no_secrets(name: str) -> None:
    text = (UNITS / name).read_text()
    assert not WIREGUARD_KEY.search(text)
    for key, values in unit_settings(UNITS / name).items():
        for value in values:
            assert not re.search(r"(?i)private.?key|token|secret|password", value), f"{key}={value}"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    # A trivially valid unit first: if that fails, systemd-analyze cannot work in this environment.
    control = tmp_path / "control.service"
    control.write_text("[Unit]\nDescription=control\n[Service]\nType=exec\nExecStart=/bin/true\n")
    probe = run(analyze, "verify", str(control), cwd=tmp_path)
    if probe.returncode != 0 or probe.stderr.strip():
        pytest.skip(f"systemd-analyze verify does not work here: {(probe.stderr or probe.stdout).strip()}")
    # verify also checks that ExecStart= names an executable; without install.sh's link, a stand-in is used.
    stand_in = BINARY if os.access(BINARY, os.X_OK) else "/bin/true"
    for name in UNIT_COMMANDS:
        text = (UNITS / name).read_text().replace(f"ExecStart={BINARY}", f"ExecStart={stand_in}")
        (tmp_path / name).write_text(text)
        result = run(analyze, "verify", str(tmp_path / name), cwd=tmp_path)
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 0 and not output, f"{name}:\n{output}"


def test_sysusers_snippet(tmp_path: Path) -> None:
    sysusers = tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    snippet = UNITS / "sysusers.d" / "dnsguard.conf"
    result = run(sysusers, "--dry-run", f"--root={tmp_path}", str(snippet))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dnsguard" in result.stdout + result.stderr


def test_tmpfiles_snippet_locks_down_the_config_directory(tmp_path: Path) -> None:
    """Create the user in a scratch root, then apply the tmpfiles snippet there (needs root for chown)."""
    sysusers, tmpfiles = tool("systemd-sysusers"), tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("applying ownership with systemd-tmpfiles needs root")
    (tmp_path / "etc" / "dnsguard").mkdir(parents=True)
    config = tmp_path / "etc" / "dnsguard" / "server.yaml"
    config.write_text("{}\n")
    config.chmod(0o644)
    result = run(sysusers, f"--root={tmp_path}", str(UNITS / "sysusers.d" / "dnsguard.conf"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tmpfiles, f"--root={tmp_path}", "--create", str(UNITS / "tmpfiles.d" / "dnsguard.conf"))
    assert result.returncode == 0, result.stdout + result.stderr
    group = next(
        line.split(":")[2]
        for line in (tmp_path / "etc" / "group").read_text().splitlines()
        if line.startswith("dnsguard:")
    )
    directory = (tmp_path / "etc" / "dnsguard").stat()
    assert (directory.st_mode & 0o7777, directory.st_uid, directory.st_gid) == (0o750, 0, int(group))
    assert (config.stat().st_mode & 0o7777, config.stat().st_gid) == (0o640, int(group))


# -- Kubernetes -----------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml(path) if "kind" in doc]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in k8s_objects() if obj["kind"] == kind]


def test_k8s_has_the_expected_objects() -> None:
    kinds = {obj["kind"] for obj in k8s_objects()}
    assert kinds >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "Kustomization",
    }
    (kustomization,) = by_kind("Kustomization")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secret.example.yaml" not in kustomization["resources"], "key material must not be applied"


def test_k8s_never_privileged_and_only_net_admin() -> None:
    for obj in k8s_objects():
        for key, value in walk(obj):
            assert not (key == "privileged" and value is True), f"{obj['kind']} {obj['metadata']['name']}"
            assert not (key in {"hostNetwork", "hostPID", "hostIPC"} and value is True), key
    (statefulset,) = by_kind("StatefulSet")
    for container in statefulset["spec"]["template"]["spec"]["containers"]:
        context = container["securityContext"]
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "NET_ADMIN" in context["capabilities"]["add"]
        assert set(context["capabilities"]["add"]) <= {"NET_ADMIN", "NET_BIND_SERVICE"}
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True


def test_k8s_statefulset_has_tun_probes_resources_and_per_replica_services() -> None:
    (statefulset,) = by_kind("StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    tun = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/net/tun"]
    assert tun and volumes[tun[0]["name"]]["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    sysctls = {s["name"]: s["value"] for s in pod["securityContext"]["sysctls"]}
    assert sysctls == {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"}

    name, replicas = statefulset["metadata"]["name"], statefulset["spec"]["replicas"]
    services = {svc["metadata"]["name"]: svc for svc in by_kind("Service")}
    assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for i in range(replicas):
        spec = services[f"{name}-{i}"]["spec"]
        assert spec["type"] == "LoadBalancer"
        assert spec["selector"] == {"statefulset.kubernetes.io/pod-name": f"{name}-{i}"}
        assert [(p["port"], p["protocol"]) for p in spec["ports"]] == [(51820, "UDP")]
    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == statefulset["spec"]["selector"]["matchLabels"]


def test_k8s_secret_example_holds_only_placeholders() -> None:
    (secret,) = by_kind("Secret")
    for name, text in secret["stringData"].items():
        assert not WIREGUARD_KEY.search(text), name
        for line in text.splitlines():
            if re.match(r"\s*(PrivateKey|PublicKey|PresharedKey)\s*=", line):
                assert "REPLACE" in line, f"{name}: {line}"


def test_k8s_server_config_passes_dnsguard_check(tmp_path: Path) -> None:
    """The ConfigMap's server.yaml, with the Secret's wg-quick file stood in for, is a valid config."""
    from dnsguard.wireguard.keys import generate_private_key, public_key

    (configmap,) = by_kind("ConfigMap")
    text = configmap["data"]["server.yaml"]
    wg = tmp_path / "wg0.conf"
    wg.write_text(
        f"[Interface]\nPrivateKey = {generate_private_key()}\nAddress = 10.8.0.1/24\nListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {public_key(generate_private_key())}\nAllowedIPs = 10.8.0.2/32\n"
    )
    for path in ("/etc/dnsguard/tunnel/wg0.conf", "/usr/share/dnsguard/blocklists", "/var/cache/dnsguard"):
        assert path in text
    text = (
        text.replace("/etc/dnsguard/tunnel/wg0.conf", str(wg))
        .replace("/usr/share/dnsguard/blocklists", str(ROOT / "blocklists"))
        .replace("/var/cache/dnsguard", str(tmp_path / "cache"))
    )
    config = tmp_path / "server.yaml"
    config.write_text(text)
    result = run(sys.executable, "-m", "dnsguard", "check", "-c", str(config), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubectl_kustomize_renders() -> None:
    result = run(tool("kubectl"), "kustomize", str(K8S))
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = [doc["kind"] for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "StatefulSet" in kinds and "Secret" not in kinds


# -- container and everything else -------------------------------------------------------------


def test_containerfile_builds_from_what_the_repository_has() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    assert "debian:bookworm-slim" in text
    assert re.search(r"apt-get install [^\n]*\biproute2\b[^\n]*\bnftables\b", text)
    assert 'ENTRYPOINT ["dnsguard"]' in text
    extras = re.findall(r'\.\[(\w+)\]"', text)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras and set(extras) <= declared.keys()
    ignore = (DEPLOY / "container" / "Containerfile.dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY {item}: not in the repository"
            assert f"!{item}" in ignore or f"!{item}/" in ignore, f"{item} is excluded from the context"


def test_no_key_material_anywhere_in_deploy() -> None:
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        assert not WIREGUARD_KEY.search(text), f"{path} contains something shaped like a WireGuard key"
