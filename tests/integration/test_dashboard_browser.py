"""The dashboard in a real headless Chromium, against `dnsguard resolve` in a lab namespace.

Chromium runs in the client namespace beside the resolver (so its pages reach nothing but the lab) and is
driven over the DevTools protocol (dnsguard.lab.browser). Set DNSGUARD_DASHBOARD_SCREENSHOT=PATH to keep
the overview's screenshot (docs/dashboard.png is made this way).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from dnsguard.lab import ADDRESSES, Lab
from dnsguard.lab import dig_answers as answers
from dnsguard.lab.browser import Browser, Problem
from dnsguard.lab.peers import DnsguardDaemon
from tests.integration.test_operations import api

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "dashboard-lab-token-0123456789"
API = "http://127.0.0.1:8053"
BLOCKED = "www.doubleclick.net"
OPTIONAL_ENDPOINTS = (f"{API}/api/stats", f"{API}/api/clients")

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="needs Debian's chromium (deploy/install.sh --test)"
)


def expected(problem: Problem) -> bool:
    """The overview and the clients page ask for optional endpoints first; a 404 there is the fallback."""
    return (
        problem.kind == "log.network"
        and problem.url.split("?")[0] in OPTIONAL_ENDPOINTS
        and "404" in problem.text
    )


def test_dashboard_shows_a_fresh_query_and_allowing_it_from_the_log_lets_the_next_lookup_pass(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    config: dict[str, object] = {
        "resolver": {"listen": ["127.0.0.1:53"]},
        "upstreams": {"servers": [ADDRESSES.dns4], "strategy": "strict", "timeout": "1s"},
        "lists": {"ads": {"sources": [str(ROOT / "blocklists" / "ads-trackers.txt")]}},
        "groups": {"default": {"block": ["ads"]}, "kids": {"clients": ["192.0.2.10/32"], "block": ["ads"]}},
        "loading": {"cache-dir": str(tmp_path / "cache")},
        "api": {"listen": "127.0.0.1:8053", "token": TOKEN},
        "managed-lists": {"directory": str(state)},
        "reload": {"watch": False},
        "querylog": {"enabled": True, "path": str(tmp_path / "querylog.sqlite")},
    }
    with Lab() as lab:
        daemon = DnsguardDaemon(lab, "client", "resolve", config)
        daemon.start(wait_for_interface=None)
        lab.wait_for(
            lambda: "status: NOERROR" in lab.dig("client", f"www.{ADDRESSES.zone}", "127.0.0.1").stdout,
            timeout=20,
            what="dnsguard resolve to answer",
        )
        try:
            for name in (f"www.{ADDRESSES.zone}", f"mail.{ADDRESSES.zone}", BLOCKED):
                lab.dig("client", name, "127.0.0.1")
            assert answers(lab.dig("client", BLOCKED, "127.0.0.1").stdout) == ["0.0.0.0"]

            def written() -> int:
                code, body = api(lab, "client", f"{API}/api/status", token=TOKEN)
                return int(json.loads(body)["querylog"]["written"]) if code == 200 else 0

            # The overview counts what the log has written (a hand-off a second): wait for it.
            lab.wait_for(lambda: written() >= 4, timeout=10, what="the queries to be written")

            with Browser(lab, "client") as browser:
                # The token is asked for, kept in the tab, and the overview loads with it.
                browser.navigate(f"{API}/")
                browser.wait_for("!document.getElementById('login').hidden", what="the login form")
                # How the page learns that a token is needed: the one error before logging in.
                assert [(p.kind, p.url) for p in browser.problems] == [("log.network", f"{API}/api/status")]
                assert "401" in browser.problems[0].text
                browser.problems.clear()
                browser.click("#token")
                browser.type_text(TOKEN)
                browser.click("#login-form button")
                browser.wait_for("document.body.dataset.loaded === 'overview'", what="the overview")
                total = browser.evaluate("document.getElementById('count-total').textContent")
                assert int(total) >= 4
                assert browser.evaluate("document.querySelectorAll('#chart svg rect.bar-queries').length") > 0
                screenshot = tmp_path / "dashboard.png"
                browser.screenshot(screenshot)
                if os.environ.get("DNSGUARD_DASHBOARD_SCREENSHOT"):
                    shutil.copy(screenshot, os.environ["DNSGUARD_DASHBOARD_SCREENSHOT"])

                # The log shows the query just made, blocked; its Allow button lets the next lookup pass.
                browser.navigate(f"{API}/#log")
                row = f'#log-table tr[data-name="{BLOCKED}"][data-result="blocked"]'
                browser.wait_for(
                    f"document.querySelector({row!r}) !== null", what="the blocked query in the log"
                )
                browser.click(f'{row} button[data-action="allow"]')
                browser.wait_for(
                    "document.getElementById('message').textContent.includes('allowed')",
                    what="the allow to be done",
                )
                assert answers(lab.dig("client", BLOCKED, "127.0.0.1").stdout) == [ADDRESSES.http4]
                assert f"@@||{BLOCKED}^$important" in (state / "managed-allow.txt").read_text()

                # Pausing one group from the page: only that group's clients are unfiltered.
                browser.evaluate("document.getElementById('pause-group').value = 'kids'")
                browser.evaluate("document.getElementById('pause-minutes').value = ''")
                browser.click("#pause-button")
                browser.wait_for(
                    "document.getElementById('blocking-state').textContent"
                    ".includes('kids paused until resumed')",
                    what="the group pause",
                )

                for page in ("clients", "lists"):
                    browser.navigate(f"{API}/#{page}")
                    browser.wait_for(f"document.body.dataset.loaded === {page!r}", what=f"the {page} page")
                assert (
                    browser.evaluate("document.querySelector('#rules-table').textContent").count(BLOCKED) == 1
                )
                assert browser.evaluate(
                    "document.querySelector('#lists-table tr[data-list=\"managed-allow\"]') !== null"
                )
                unexpected = browser.problems_except(expected)
                assert not unexpected, "\n".join(map(str, unexpected))

                # A restart keeps the log: the blocked query comes back from the lasting query log.
                browser.navigate("about:blank")
                daemon.stop()
                daemon.start(wait_for_interface=None)
                lab.wait_for(
                    lambda: (
                        "status: NOERROR" in lab.dig("client", f"www.{ADDRESSES.zone}", "127.0.0.1").stdout
                    ),
                    timeout=20,
                    what="dnsguard resolve to answer again",
                )
                browser.navigate(f"{API}/#log")
                browser.wait_for(
                    f"document.querySelector({row!r}) !== null", what="the blocked query after the restart"
                )
                assert "lasting query log" in browser.evaluate(
                    "document.getElementById('log-note').textContent"
                )
                browser.navigate(f"{API}/#overview")
                browser.wait_for("document.body.dataset.loaded === 'overview'", what="the overview again")
                assert int(browser.evaluate("document.getElementById('count-total').textContent")) >= 6
                unexpected = browser.problems_except(expected)
                assert not unexpected, "\n".join(map(str, unexpected))
        except Exception:
            print(daemon.log())
            raise
