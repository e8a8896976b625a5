#!/usr/bin/env python3
"""Render an edgekit report.html in headless Chromium: a full-page PNG, plus what the page showed.

    python tools/screenshot_report.py bundles/tiny_cnn/report.html report.png
    python tools/screenshot_report.py report.html report.png --json check.json

Drives Debian's chromium through chromedriver's W3C HTTP API with the standard library only (no
selenium): opens the file, reads the table rows, whether every image decoded, and the browser
console log, then captures the whole page (Chrome DevTools Page.captureScreenshot).
Needs: apt-get install -y chromium chromium-driver.
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"]

PAGE_STATE = """
const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth,
                                              height: i.naturalHeight, data: i.src.startsWith('data:image/png')}));
const rows = [...document.querySelectorAll('#targets tbody tr')].map(r => [...r.cells].map(c => c.innerText.trim()));
const heads = [...document.querySelectorAll('#targets thead th')].map(c => c.innerText.trim());
return {title: document.title, heads, rows, imgs, h2: [...document.querySelectorAll('h2')].map(h => h.innerText),
        reproduce: (document.querySelector('#reproduce') || {}).innerText || '',
        width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Driver:
    """The few chromedriver endpoints this needs."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"{}")

    def s(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.session}{path}", body)["value"]


def find(name: str, *alts: str) -> str:
    for n in (name, *alts):
        path = shutil.which(n)
        if path:
            return path
    sys.exit(f"{name} not found: apt-get install -y chromium chromium-driver")


def render(html: Path, png: Path | None, width: int = 1280) -> dict:
    """Open ``html`` in headless Chromium; -> page state and console log; writes ``png`` when given."""
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="edgekit-chromium-")
    proc = subprocess.Popen([find("chromedriver"), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d = Driver(port)
    try:
        for _ in range(100):
            try:
                d.call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {"binary": find("chromium", "chromium-browser", "google-chrome"),
                                   "args": CHROME_ARGS + [f"--user-data-dir={profile}", f"--window-size={width},900"]}}}}
        d.session = d.call("POST", "/session", caps)["value"]["sessionId"]
        d.s("POST", "/url", {"url": html.resolve().as_uri()})
        state = d.s("POST", "/execute/sync", {"script": PAGE_STATE, "args": []})
        state["console"] = d.s("POST", "/se/log", {"type": "browser"})
        if png is not None:
            shot = d.s("POST", "/goog/cdp/execute", {"cmd": "Page.captureScreenshot", "params": {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": state["width"], "height": state["height"], "scale": 1}}})
            png.write_bytes(base64.b64decode(shot["data"]))
            state["png"] = str(png)
        return state
    finally:
        if d.session:
            try:
                d.call("DELETE", f"/session/{d.session}")
            except (urllib.error.URLError, ConnectionError):
                pass
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("html", type=Path, help="a report.html")
    p.add_argument("png", type=Path, nargs="?", help="screenshot to write (default: beside the html)")
    p.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels (default %(default)s)")
    p.add_argument("--json", type=Path, help="also write what the page showed (rows, images, console) here")
    a = p.parse_args(argv)
    if not a.html.is_file():
        print(f"{a.html} does not exist", file=sys.stderr)
        return 2
    png = a.png or a.html.with_suffix(".png")
    state = render(a.html, png, a.width)
    if a.json:
        a.json.write_text(json.dumps(state, indent=2))
    broken = [i["alt"] for i in state["imgs"] if not (i["complete"] and i["width"] > 0)]
    errors = [m for m in state["console"] if m.get("level") in ("SEVERE", "ERROR")]
    print(f"{png}: {state['width']}x{state['height']} px, {len(state['rows'])} table rows, "
          f"{len(state['imgs'])} images ({len(broken)} broken), {len(errors)} console errors")
    return 1 if broken or errors else 0


if __name__ == "__main__":
    sys.exit(main())
