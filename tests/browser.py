"""A small headless-Chromium driver for the page tests: the Chrome DevTools Protocol over
``--remote-debugging-pipe`` (file descriptors 3 and 4, NUL-terminated JSON), so no websocket library or
browser-automation package is needed; the browser is the system's (Debian: ``apt-get install chromium``).

    with Chromium() as browser:
        page = browser.open(Path("site/index.html"))
        page.evaluate("document.title")
        page.screenshot(Path("shot.png"))
        page.problems  # console errors, uncaught exceptions, failed loads, requests that left file://
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
         "--remote-debugging-pipe")  # small /dev/shm in containers; players may start without a click


class CDPError(RuntimeError):
    pass


class Chromium:
    """One headless browser with a new, empty profile; :meth:`open` gives a :class:`Page`."""

    def __init__(self, executable: Path = CHROMIUM, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="disse-chromium-")
        to_child_r, self._to_child = os.pipe()      # we write commands; the browser reads fd 3
        self._from_child, from_child_w = os.pipe()  # the browser writes fd 4; we read replies and events

        def wire() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            a = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.log = open(Path(self.profile) / "chromium.log", "wb")
        self.proc = subprocess.Popen([str(executable), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self.events: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    # -- transport -------------------------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.get(msg["id"])
                    if q is not None:
                        q.put(msg)
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """One command; its result, or :class:`CDPError`."""
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            q = self._replies[mid] = queue.Queue()
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=self.timeout)
        except queue.Empty:
            raise CDPError(f"{method}: no reply in {self.timeout} s") from None
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, path: Path, query: str = "") -> "Page":
        """A new tab showing ``path`` (a local file, ``?query`` appended), after its load event."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        url = Path(path).resolve().as_uri() + (f"?{query}" if query else "")
        self.send("Page.navigate", {"url": url}, session=session)
        page.wait_for("Page.loadEventFired")
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (CDPError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Page:
    """One tab. ``problems``: console errors, uncaught exceptions, error log entries (failed loads, CSP
    violations) and requests for anything but ``file:`` / ``data:`` URLs, gathered as events arrive."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser, self.session = browser, session
        self.problems: list[str] = []
        self.requests: list[str] = []
        self._pending: list[dict] = []

    def _note(self, msg: dict) -> None:
        if msg.get("sessionId") != self.session:
            self._pending.append(msg)
            return
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.problems.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                        for a in p.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.problems.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            self.problems.append(f"log: {e.get('text')} {e.get('url', '')}")
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            self.requests.append(url)
            if not url.startswith(("file:", "data:")):
                self.problems.append(f"network request: {url}")
        elif method == "Network.loadingFailed":
            self.problems.append(f"load failed: {p.get('errorText')} ({p.get('type')})")

    def drain(self, seconds: float = 0.0) -> None:
        """Take in the events that have arrived (waiting up to ``seconds`` for more)."""
        end = time.monotonic() + seconds
        while True:
            try:
                self._note(self.browser.events.get(timeout=max(0.0, end - time.monotonic())))
            except queue.Empty:
                return

    def wait_for(self, method: str) -> dict:
        end = time.monotonic() + self.browser.timeout
        while time.monotonic() < end:
            try:
                msg = self.browser.events.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            self._note(msg)
            if msg.get("method") == method and msg.get("sessionId") == self.session:
                return msg
        raise CDPError(f"no {method} in {self.browser.timeout} s")

    def evaluate(self, expression: str):
        """Run JavaScript in the page (promises awaited) and return its JSON value."""
        res = self.browser.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                     "returnByValue": True}, session=self.session)
        self.drain()
        if "exceptionDetails" in res:
            raise CDPError(f"evaluate: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                 session=self.session)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
