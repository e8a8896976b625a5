"""`python -m edgekit.inspect ARTIFACT META_JSON OUT_JSON`: the coverage of one artifact, written as
{"result": ..., "markdown": ...} or {"error": ...}. The pipeline runs it in a subprocess, because
measuring XNNPACK loads the artifact in a native interpreter (a crash there must not kill an export)."""
import json
import sys
from pathlib import Path

from edgekit.errors import UserError

from . import inspect_artifact


def main(artifact: str, meta_json: str, out_json: str) -> int:
    try:
        res = inspect_artifact(Path(artifact), json.loads(meta_json) or None)
        out = {"result": res.to_dict(), "markdown": res.markdown(ops=False)}
    except UserError as exc:
        out = {"error": exc.to_dict()}
    Path(out_json).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
