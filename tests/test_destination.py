"""`--out`: only a bundle edgekit wrote is replaced, one export per destination at a time, the swap
is atomic, and what a crashed or killed run left behind is restored or cleaned by the next one."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgekit import destination as D
from edgekit.cli import main

EXPORT = ["export", "tiny_cnn", "--targets", "onnx", "--samples", "4", "--quiet"]


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


@pytest.mark.parametrize("manifest", ["{}", json.dumps({"format": "edgekit-bundle"}), "not json"])
def test_stray_manifest_does_not_make_a_folder_replaceable(tmp_path, capsys, manifest):
    out = tmp_path / "mine"
    (out / "photos").mkdir(parents=True)
    (out / "photos" / "cat.jpg").write_bytes(b"precious")
    (out / "notes.txt").write_text("my notes")
    (out / "manifest.json").write_text(manifest)
    before = _tree(out)
    assert main([*EXPORT, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("E-OUT-EXISTS")
    assert _tree(out) == before


def test_bundle_with_user_files_added_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "b"
    assert main([*EXPORT, "--out", str(out)]) == 0
    (out / "my_app_assets").mkdir()
    (out / "my_app_assets" / "icon.png").write_bytes(b"icon")
    assert main([*EXPORT, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("E-OUT-EXISTS") and "my_app_assets" in err
    assert (out / "my_app_assets" / "icon.png").read_bytes() == b"icon"


def test_a_bundle_edgekit_wrote_is_replaced_and_nothing_is_left_beside_it(tmp_path):
    out = tmp_path / "b"
    assert main([*EXPORT, "--out", str(out)]) == 0
    first = json.loads((out / "manifest.json").read_text())["created"]
    time.sleep(1.1)
    assert main([*EXPORT, "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["created"] != first
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.edgekit-lock", "b"]


def test_second_export_to_a_locked_destination_is_busy(tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "b"
    with FileLock(str(D.lock_path(out))):
        assert main([*EXPORT, "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("E-OUT-BUSY")
    assert not out.exists()


def test_concurrent_exports_one_wins_the_other_is_busy(tmp_path):
    out = tmp_path / "b"
    cmd = [sys.executable, "-m", "edgekit.cli", *EXPORT, "--out", str(out)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    codes = [rc for rc, _ in results]
    assert codes in ([0, 2], [0, 0]), results  # [0, 0]: the second started after the first finished
    if codes == [0, 2]:
        assert "E-OUT-BUSY" in results[1][1]
    assert json.loads((out / "manifest.json").read_text())["format"] == "edgekit-bundle"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.edgekit-lock", "b"]


def test_crash_between_the_renames_is_repaired_by_the_next_export(tmp_path):
    """The state a crash leaves in the two-rename fallback: the old bundle aside, none at --out."""
    out = tmp_path / "b"
    assert main([*EXPORT, "--out", str(out)]) == 0
    aside = tmp_path / ".b.old-12345-abc_1"
    aside.mkdir()
    os.rename(out, aside / "bundle")
    stale = tmp_path / ".b.tmp-12345-xyz_2"
    (stale / "half").mkdir(parents=True)
    with D.locked(out):  # what every export does first
        assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.edgekit-lock", "b"]


def test_recover_touches_only_this_destinations_folders(tmp_path):
    out = tmp_path / "b"
    other = tmp_path / ".b.tmp-x.tmp-1-abc"  # looks alike, belongs to no export of "b"
    other.mkdir()
    mine = tmp_path / ".bb.tmp-1-abc"
    mine.mkdir()
    D.recover(out)
    assert other.is_dir() and mine.is_dir()


def test_swap_is_atomic_the_destination_never_disappears(tmp_path):
    out, stage = tmp_path / "b", tmp_path / ".b.tmp-1-new"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    stage.mkdir()
    (stage / "manifest.json").write_text("new")
    D.swap_in(stage, out)
    assert (out / "manifest.json").read_text() == "new" and not stage.exists()


def test_sigterm_during_export_leaves_no_staging_or_run_folder(tmp_path):
    out, tmp = tmp_path / "b", tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", *EXPORT, "--out", str(out)], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(p.name.startswith(".b.tmp-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.edgekit-lock", "tmp"]
    assert list(tmp.iterdir()) == []
