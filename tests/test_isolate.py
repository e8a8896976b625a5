"""The subprocess isolation itself: a runtime process that dies by a signal, or hangs, becomes a
coded error result in the parent instead of killing or blocking the pipeline."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.isolate import clean_stale_runs, run_artifact

ARTIFACT = {"target": "onnx", "precision": "fp32", "path": "x.onnx", "files": ["x.onnx"], "meta": {}}
INPUTS = [np.zeros((1, 1, 3), np.float32)]


def _launcher(code: str) -> list[str]:
    # `python -c CODE` ignores the "-m edgekit.isolate DIR" arguments appended after it
    return [sys.executable, "-c", code]


def test_segfaulting_runtime_is_a_coded_error(tmp_path):
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS,
                       launcher=_launcher("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    assert out.outputs is None and out.error["code"] == "E-RUNTIME-CRASH"
    assert "SIGSEGV" in out.error["message"]


def test_hanging_runtime_is_stopped_at_the_timeout(tmp_path):
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS, timeout_s=2, launcher=_launcher("import time; time.sleep(60)"))
    assert out.error["code"] == "E-RUNTIME-CRASH" and "timed out after 2 s" in out.error["message"]
    assert out.runtime_s < 20


def test_missing_artifact_is_reported_not_raised(tmp_path):
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS)
    assert out.error["code"] == "E-ARTIFACT-CORRUPT" and "x.onnx" in out.error["message"]


def test_scratch_folder_is_named_after_the_parent_pid(tmp_path):
    code = "import sys; print('SCRATCH=' + sys.argv[-1], file=sys.stderr)"
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS, launcher=_launcher(code))
    scratch = out.log.split("SCRATCH=")[1].split()[0]
    assert Path(scratch).name.startswith(f"edgekit-run-{os.getpid()}-") and not Path(scratch).exists()


def test_clean_stale_runs_removes_only_folders_of_dead_runs(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    victim = tmp_path / "keep-me"
    victim.mkdir()
    made = {}
    for name in (f"edgekit-run-{dead.pid}-a1", f"edgekit-inspect-{dead.pid}-b2",  # stale: removed
                 f"edgekit-run-{os.getpid()}-c3", f"edgekit-run-{os.getppid()}-d4",  # live pids: kept
                 f"other-{dead.pid}-e5", f"edgekit-run-x{dead.pid}-f6", f"edgekit-run-{dead.pid}"):  # other names
        made[name] = tmp_path / name
        made[name].mkdir()
        (made[name] / "outputs.npz").write_bytes(b"x")
    (tmp_path / f"edgekit-run-{dead.pid}-link").symlink_to(victim, target_is_directory=True)
    (tmp_path / f"edgekit-run-{dead.pid}-file").write_text("not a folder")

    removed = clean_stale_runs(tmp_path)

    stale = {f"edgekit-run-{dead.pid}-a1", f"edgekit-inspect-{dead.pid}-b2"}
    assert sorted(p.name for p in removed) == sorted(stale)
    assert all(made[n].exists() == (n not in stale) for n in made)
    assert victim.is_dir() and (tmp_path / f"edgekit-run-{dead.pid}-link").is_symlink()
    assert (tmp_path / f"edgekit-run-{dead.pid}-file").is_file()


@pytest.mark.parametrize("make", ["symlink", "fifo", "garbage"])
def test_a_result_the_child_forges_is_a_coded_error(tmp_path, make):
    """What the child leaves in the scratch folder is untrusted: a symlink to a host file is not
    followed, a FIFO does not block the parent, garbage is not an exception."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"latency_ms": 1.0, "error": null}')
    code = {"symlink": f"os.symlink({str(secret)!r}, os.path.join(d, 'result.json'))",
            "fifo": "os.mkfifo(os.path.join(d, 'result.json'))",
            "garbage": "open(os.path.join(d, 'result.json'), 'w').write('[1, 2')"}[make]
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS, timeout_s=30,
                       launcher=_launcher(f"import os, sys; d = sys.argv[-1]; {code}"))
    assert out.error["code"] == "E-RUNTIME-CRASH" and "unreadable result" in out.error["message"]
    assert out.runtime_s < 20
