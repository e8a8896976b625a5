"""Import OpenVINO without its usage telemetry.

Measured (openvino 2026.4.1 with openvino-telemetry 2025.2.0, which pip installs with it): a plain
``import openvino`` imports ``openvino.tools.ovc``, which creates ``~/intel/openvino_ga_cid`` and
``~/intel/stats`` and sends a Google Analytics event ("ov", "import"); ``convert_model`` sends more.
It asks nobody: the consent check used there (``enable_opt_in_dialog=False``) treats a missing
consent file as consent, and only a consent file or CI=true in the environment turns it off.

OpenVINO's own code falls back to ``openvino.tools.ovc.telemetry_stub`` (every method a no-op) when
``import openvino_telemetry`` raises ImportError. Marking that module absent in ``sys.modules``
before the first ``import openvino`` takes exactly that path: no file in the home folder, no socket.
"""
from __future__ import annotations

import sys

TELEMETRY = "openvino_telemetry"


def import_openvino():
    """The ``openvino`` module, imported with its telemetry package masked (see the module docstring).

    If the process imported openvino before edgekit did, its telemetry is already set up and this
    changes nothing: that was the caller's own import."""
    if "openvino" not in sys.modules and sys.modules.get(TELEMETRY) is None:
        sys.modules[TELEMETRY] = None  # `import openvino_telemetry` now raises ImportError
    import openvino

    return openvino
