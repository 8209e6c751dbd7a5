"""Opens an HTML report in headless Chromium and reports what went wrong (for the tests).

Chromium (Debian's ``chromium``) is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL bytes on file descriptors 3 and 4), so
no extra Python package is needed. The page is loaded from a ``file://`` URL with the machine's
network flags off; the check collects console errors and warnings, uncaught exceptions, failed
loads and any request that is not a ``file:``/``data:``/``blob:`` URL (a self-contained page makes
none), then counts the bokeh plots that rendered a canvas of non-zero size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "PageReport", "check_page", "find_chromium"]

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-pipe", "--window-size=1280,2000",
)

# Counts bokeh plots whose canvas rendered with a size (bokeh draws inside shadow roots).
_COUNT_DRAWN = r"""
(() => {
  const canvases = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if (el.tagName === 'CANVAS') canvases.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  const views = (window.Bokeh && window.Bokeh.index) ? Object.keys(window.Bokeh.index).length : 0;
  return JSON.stringify({canvases: canvases.filter(c => c.width > 0 && c.height > 0).length, views: views,
                         ready: document.readyState});
})()
"""


@dataclasses.dataclass
class PageReport:
    """What loading a page showed."""

    console_errors: list[str]
    exceptions: list[str]
    external_requests: list[str]
    drawn_canvases: int
    bokeh_views: int

    @property
    def problems(self) -> list[str]:
        return [*self.console_errors, *self.exceptions, *(f"network request: {u}" for u in self.external_requests)]


def find_chromium() -> str:
    """The Chromium binary, or FileNotFoundError saying how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        "Expected Chromium for the HTML report checks (Debian: `apt-get install -y chromium`; .ci/run installs it). "
        "Received: no chromium on PATH."
    )


class _Pipe:
    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int):
        self.proc, self.to_browser, self.from_browser = proc, to_browser, from_browser
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()})")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0) -> dict:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read(deadline))
        except TimeoutError:
            return


def _text(args: list[dict]) -> str:
    return " ".join(str(a.get("value", a.get("description", a.get("type", "")))) for a in args)


def check_page(path: str | os.PathLike, settle_seconds: float = 2.0, timeout: float = 60.0) -> PageReport:
    """Loads ``path`` in headless Chromium and returns what the page did (see the module docstring).

    Raises:
        FileNotFoundError: for a missing page, or no Chromium installed.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected an HTML file. Received: {path!r} (missing)")
    binary = find_chromium()
    profile = tempfile.mkdtemp(prefix="aimet_tf_chromium_")
    to_read, to_browser = os.pipe()  # browser reads fd 3
    from_browser, to_write = os.pipe()  # browser writes fd 4

    def child_fds():
        # Move both ends above 4 first, so that placing one cannot overwrite the other.
        high_read, high_write = os.dup(to_read), os.dup(to_write)
        while min(high_read, high_write) <= 4:
            high_read, high_write = os.dup(high_read), os.dup(high_write)
        os.dup2(high_read, 3)
        os.dup2(high_write, 4)

    stderr_file = open(os.path.join(profile, "chromium.log"), "wb")
    proc = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        # close_fds=False: subprocess would otherwise close 3 and 4 after preexec_fn placed the pipes there.
        preexec_fn=child_fds, close_fds=False, stdout=subprocess.DEVNULL, stderr=stderr_file,
    )
    os.close(to_read)
    os.close(to_write)
    pipe = _Pipe(proc, to_browser, from_browser)
    try:
        targets = pipe.call("Target.getTargets", timeout=timeout)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        session = pipe.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.call("Page.navigate", {"url": "file://" + path}, session=session, timeout=timeout)
        deadline = time.monotonic() + timeout
        state: dict[str, Any] = {}
        while time.monotonic() < deadline:
            pipe.drain(settle_seconds)
            result = pipe.call("Runtime.evaluate", {"expression": _COUNT_DRAWN, "returnByValue": True}, session=session)
            state = json.loads(result["result"]["value"])
            if state["ready"] == "complete":
                break
        pipe.drain(settle_seconds)
        result = pipe.call("Runtime.evaluate", {"expression": _COUNT_DRAWN, "returnByValue": True}, session=session)
        state = json.loads(result["result"]["value"])
    finally:
        try:
            pipe.send("Browser.close")
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.close(to_browser)
        os.close(from_browser)
        stderr_file.close()
        if os.environ.get("AIMET_TF_KEEP_CHROMIUM_LOG"):
            print(open(os.path.join(profile, "chromium.log"), errors="replace").read()[-3000:])
        shutil.rmtree(profile, ignore_errors=True)
    errors, exceptions, external = [], [], []
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            errors.append(f"console.{params['type']}: {_text(params.get('args', []))}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exceptions.append(f"exception: {details.get('exception', {}).get('description', details.get('text', ''))}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            errors.append(f"log {params['entry']['level']}: {params['entry'].get('text', '')}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                external.append(url)
    return PageReport(errors, exceptions, external, int(state.get("canvases", 0)), int(state.get("views", 0)))
