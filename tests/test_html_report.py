"""report.html on real reports (a good and a perturbed tiny_cnn bundle), checked as HTML and in
headless Chromium (Debian's chromium + chromium-driver): table, decoded images, no console errors."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys

from pathlib import Path

import pytest
from PIL import Image

from edgekit.html_report import render_html, write_html
from tiny_bundle import checked_reports

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    return checked_reports(tmp_path_factory)


def _pngs(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_page_is_self_contained_with_table_and_charts(checked):
    report, errors = checked["bad"]
    html = render_html(report, errors)
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert not re.search(r"(src|href)=\"(https?:|//|file:)", html) and "<script" not in html  # nothing loaded
    assert '<table id="targets">' in html and ">tflite<" in html and ">onnx<" in html
    assert "What diverged" in html and "top-1 agreement 37.50% is below 100%" in html
    images = _pngs(html)
    assert len(images) == 2  # size/latency bars, error histograms
    assert all(im.format == "PNG" and im.width > 600 and im.height > 150 for im in images)
    assert "pip install -c constraints.txt" in html and 'id="reproduce"' in html


def test_failing_target_is_marked_in_table_and_histogram_data(checked):
    report, errors = checked["bad"]
    assert report["targets"]["onnx"]["status"] == "fail" and report["targets"]["tflite"]["status"] == "pass"
    # the perturbed bias shows as errors of exactly ~0.5 in the onnx errors, none in tflite
    assert abs(float(errors["onnx"].max()) - 0.5) < 1e-3 and float(errors["tflite"].max()) < 1e-5
    html = render_html(report, errors)
    row = re.search(r'<tr class="fail">(.*?)</tr>', html).group(1)
    assert ">onnx<" in row and 'class="bad"' in row and "37.5%" in row


def test_per_layer_chart_and_quant_steps_when_present(checked):
    report, errors = json.loads(json.dumps(checked["good"][0])), checked["good"][1]
    report["targets"]["tflite"]["per_layer"] = [{"layer": f"conv{i}", "sqnr_db": 42.0 - 4 * i} for i in range(6)]
    report["targets"]["tflite"]["metrics"]["max_steps"] = 1.0
    html = render_html(report, errors)
    assert "Per-layer SQNR" in html and "error (q-steps)" in html and len(_pngs(html)) == 3
    plain = render_html(checked["good"][0], None)
    assert "Per-layer SQNR" not in plain and "No per-sample errors" in plain and len(_pngs(plain)) == 1


def test_chromium_shows_table_and_images_without_console_errors(checked, tmp_path):
    assert shutil.which("chromium") and shutil.which("chromedriver"), "apt-get install -y chromium chromium-driver"
    page = write_html(tmp_path / "report.html", *checked["bad"])
    png, state_file = tmp_path / "report.png", tmp_path / "state.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "screenshot_report.py"), str(page), str(png),
                        "--json", str(state_file)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    state = json.loads(state_file.read_text())
    assert state["title"] == "edgekit verify report: tiny_cnn"
    assert [row[0] for row in state["rows"]] == ["tflite", "onnx"]
    assert [row[2] for row in state["rows"]] == ["pass", "fail"] and "TOP-1 AGREE" in state["heads"]
    assert len(state["imgs"]) == 2 and all(i["complete"] and i["width"] > 600 and i["data"] for i in state["imgs"])
    assert [m for m in state["console"] if m["level"] in ("SEVERE", "ERROR")] == []
    assert "pip install" in state["reproduce"]
    shot = Image.open(png)
    assert shot.width == state["width"] and shot.height == state["height"] > 1200
    # the screenshot is not blank: the red FAIL badge and green/red bars are there
    colors = {c for _, c in shot.convert("RGB").getcolors(1 << 24)}
    assert (207, 34, 46) in colors and (26, 127, 55) in colors
