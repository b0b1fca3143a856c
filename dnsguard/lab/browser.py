"""A headless Chromium inside a lab namespace, driven over the DevTools protocol through pipes.

Chromium runs in the namespace (so the pages it loads reach only the lab, never the internet), and the
test drives it from outside: `--remote-debugging-pipe` speaks the DevTools protocol over file
descriptors 3 (commands in) and 4 (replies and events out), NUL-terminated JSON, and descriptors cross
`ip netns exec` where a debugging port on the namespace's loopback would not be reachable.

What a page test needs: navigate, evaluate, click at an element's place with real mouse events, type,
take a screenshot, and every console error, uncaught exception and browser log error (CSP violations,
failed loads) collected as it happens.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dnsguard.lab.netns import Lab

from dnsguard.errors import DnsguardError

COMMAND_TIMEOUT = 30.0
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root inside a network namespace: the setuid sandbox refuses to run
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--password-store=basic",
    "--remote-debugging-pipe",
]


class BrowserError(DnsguardError):
    """Chromium failed to start, died, or a DevTools command failed or timed out."""


@dataclass(frozen=True)
class Problem:
    """A console error, an uncaught exception or a browser log error seen on a page."""

    kind: str
    text: str
    url: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}" + (f" ({self.url})" if self.url else "")


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("no chromium: apt-get install chromium (deploy/install.sh --test)")


class Browser:
    """One Chromium with one page, in a lab role's namespace; a context manager."""

    def __init__(self, lab: Lab, role: str, width: int = 1280, height: int = 860) -> None:
        self.lab = lab
        self.role = role
        self.width, self.height = width, height
        self.problems: list[Problem] = []
        self._ids = itertools.count(1)
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._condition = threading.Condition()
        self._session = ""
        self._profile = tempfile.mkdtemp(prefix="dnsguard-chromium-")
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> None:
        to_browser_read, to_browser_write = os.pipe()
        from_browser_read, from_browser_write = os.pipe()

        def descriptors() -> None:  # in the child, before exec: the pipes become fds 3 and 4
            os.dup2(to_browser_read, 3)
            os.dup2(from_browser_write, 4)

        argv = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}", "about:blank"]
        log = (self.lab.log_dir / "chromium.log").open("wb")
        self._process = subprocess.Popen(
            self.lab.command(self.role, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(3, 4),
            preexec_fn=descriptors,
            start_new_session=True,
        )
        log.close()
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._out = to_browser_write
        self._reader = threading.Thread(target=self._read, args=(from_browser_read,), daemon=True)
        self._reader.start()
        target = self.command("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.command("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.command(f"{domain}.enable")
        self.command(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )

    def close(self) -> None:
        process = self._process
        if process is not None:
            with contextlib.suppress(BrowserError):
                self.command("Browser.close", session=False, timeout=5)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its renderers and zygotes too
                process.wait()
            os.close(self._out)
            self._process = None
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- the protocol -------------------------------------------------------------------------

    def _read(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._received(json.loads(raw))
        with self._condition:
            self._condition.notify_all()

    def _received(self, message: dict[str, Any]) -> None:
        with self._condition:
            if "id" in message:
                self._replies[message["id"]] = message
            else:
                self._note(message)
                self._events.append(message)
            self._condition.notify_all()

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])
            )
            self.problems.append(Problem("console.error", text))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text", "")
            self.problems.append(Problem("exception", description, details.get("url", "")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.problems.append(
                    Problem(f"log.{entry.get('source')}", entry.get("text", ""), entry.get("url", ""))
                )

    def command(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: bool = True,
        timeout: float = COMMAND_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one DevTools command (to the page's session unless session=False); its result."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session and self._session:
            message["sessionId"] = self._session
        try:
            os.write(self._out, json.dumps(message).encode() + b"\0")
        except OSError as exc:
            raise BrowserError(
                f"chromium is gone ({exc.strerror}); see {self.lab.log_dir}/chromium.log"
            ) from None
        deadline = time.monotonic() + timeout
        with self._condition:
            while ident not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise BrowserError(
                        f"no answer to {method} from chromium; see {self.lab.log_dir}/chromium.log"
                    )
                self._condition.wait(min(left, 0.5))
            reply = self._replies.pop(ident)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    # -- what a test does with a page ----------------------------------------------------------

    def navigate(self, url: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Load `url` and wait for its load event (a fragment change on the same page: its navigation)."""
        with self._condition:
            seen = len(self._events)
        self.command("Page.navigate", {"url": url})
        done = ("Page.loadEventFired", "Page.navigatedWithinDocument")
        deadline = time.monotonic() + timeout
        with self._condition:
            while not any(event.get("method") in done for event in self._events[seen:]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{url} did not load within {timeout:.0f} s")
                self._condition.wait(min(left, 0.5))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); BrowserError if it throws."""
        result = self.command(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression}: {details.get('exception', {}).get('description', details)}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float = 15.0, what: str = "") -> Any:
        """Poll until the expression is truthy in the page; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what or expression}")
            time.sleep(0.1)

    def click(self, selector: str) -> None:
        """Click the middle of the first element matching `selector`, as a mouse would."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if not box:
            raise BrowserError(f"nothing on the page matches {selector}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            params: dict[str, Any] = {"type": kind, "x": x, "y": y}
            if kind != "mouseMoved":
                params.update(button="left", clickCount=1)
            self.command("Input.dispatchMouseEvent", params)

    def type_text(self, text: str) -> None:
        """Type into the focused element."""
        self.command("Input.insertText", {"text": text})

    def screenshot(self, path: Path) -> None:
        data = self.command("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})[
            "data"
        ]
        path.write_bytes(base64.b64decode(data))

    def problems_except(self, expected: Callable[[Problem], bool]) -> list[Problem]:
        """The problems seen so far that `expected` does not account for."""
        return [problem for problem in self.problems if not expected(problem)]
