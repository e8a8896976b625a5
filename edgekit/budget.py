"""Budget: how much a quantized artifact may cost against the FP32 model, stated by the user.

    Budget.parse("agreement>=0.99, sqnr>=30")      # the --budget string (also "agreement>=99%")
    Budget(agreement=0.99, accuracy_drop=0.5)      # the API's keywords

- ``agreement``: top-1 agreement with the FP32 model, a fraction (every classification output);
- ``sqnr``: SQNR in dB against the FP32 model (the worst output);
- ``accuracy_drop``: accuracy points lost against the FP32 model on labelled data (edgekit.accuracy).

The manifest records the budget; every quantized artifact is judged against it by ``missed`` (its
compression cost, apart from its conversion fidelity), so `edgekit verify` fails an export whose
accuracy regressed, not only a broken converter. A manifest's budget is untrusted input: read by
``from_manifest``, which raises E-BUNDLE-INVALID for anything but the three numbers.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from edgekit.errors import UserError

# metric -> (the comparison a budget makes, the smallest and largest value it may state, what it measures)
METRICS: dict[str, tuple[str, float, float, str]] = {
    "agreement": (">=", 0.0, 1.0, "top-1 agreement with the FP32 model (a fraction)"),
    "sqnr": (">=", -100.0, 200.0, "SQNR against the FP32 model in dB (worst output)"),
    "accuracy_drop": ("<=", 0.0, 100.0, "accuracy points lost against the FP32 model (labelled data)"),
}
_TERM = re.compile(r"\s*([a-z_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*(%?)\s*")
_FIX = "write e.g. --budget 'agreement>=0.99', 'sqnr>=30' or 'accuracy_drop<=0.5' (comma-separated to combine)"


@dataclass(frozen=True)
class Budget:
    agreement: float | None = None
    sqnr: float | None = None
    accuracy_drop: float | None = None

    def __post_init__(self):
        given = self.to_dict()
        if not given:
            raise UserError("E-ARGS", "a budget states no metric", _FIX)
        for name, value in given.items():
            lo, hi = METRICS[name][1:3]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
                raise UserError("E-ARGS", f"budget {name} = {value!r:.40} is not a number in [{lo:g}, {hi:g}]", _FIX)

    @classmethod
    def parse(cls, text: str) -> "Budget":
        """``"agreement>=0.99, sqnr>=30"``; a percent sign divides agreement by 100 ("agreement>=99%")."""
        if not isinstance(text, str) or not text.strip() or len(text) > 200:
            raise UserError("E-ARGS", f"budget {text!r:.60} is not a budget string", _FIX)
        values: dict[str, float] = {}
        for term in text.split(","):
            m = _TERM.fullmatch(term)
            if not m:
                raise UserError("E-ARGS", f"budget term {term.strip()!r:.60} is not METRIC>=VALUE or METRIC<=VALUE", _FIX)
            name, op, number, percent = m.groups()
            if name not in METRICS:
                raise UserError("E-ARGS", f"budget metric {name!r} is unknown", f"use one of {', '.join(METRICS)}")
            if op != METRICS[name][0]:
                raise UserError("E-ARGS", f"budget {name}{op}... bounds the wrong side", f"write {name}{METRICS[name][0]}VALUE")
            if name in values:
                raise UserError("E-ARGS", f"budget states {name} twice", "state each metric once")
            try:
                value = float(number)
            except ValueError:
                raise UserError("E-ARGS", f"budget {name}: {number!r:.30} is not a number", _FIX) from None
            if percent and name != "agreement":
                raise UserError("E-ARGS", f"budget {name} takes no percent sign", _FIX)
            values[name] = value / 100.0 if percent else value
        return cls(**values)

    @classmethod
    def of(cls, value) -> "Budget | None":
        """What the API and a run config accept: None, a Budget, a budget string, or a dict of keywords."""
        if value is None or isinstance(value, Budget):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, dict):
            unknown = sorted(set(map(str, value)) - set(METRICS))
            if unknown:
                raise UserError("E-ARGS", f"budget keys {unknown} are unknown", f"use {', '.join(METRICS)}")
            return cls(**value)
        raise UserError("E-ARGS", f"budget is a {type(value).__name__}", "pass a string such as 'agreement>=0.99', "
                        "a dict such as {'sqnr': 30}, or an edgekit.budget.Budget")

    @classmethod
    def from_manifest(cls, raw) -> "Budget | None":
        """A manifest's ``quantization.budget`` (untrusted): None, or exactly the three numbers' keys."""
        if raw is None:
            return None
        try:
            if not isinstance(raw, dict):
                raise UserError("E-ARGS", "not an object", _FIX)
            return cls.of(raw)
        except UserError as exc:
            raise UserError("E-BUNDLE-INVALID", f"manifest 'quantization.budget' is malformed: {exc.what}",
                            "re-export the bundle with --budget; do not edit manifest.json by hand") from exc

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def describe(self) -> str:
        return ", ".join(f"{k} {METRICS[k][0]} {v:g}{' dB' if k == 'sqnr' else ''}" for k, v in self.to_dict().items())

    def missed(self, cost: dict) -> list[str]:
        """Every stated bound ``cost`` (from ``measured``) does not meet, as a sentence; a metric that was
        not measured (no classification output, no labels) is missed too, and says why."""
        out = []
        for name, bound in self.to_dict().items():
            got = cost.get(name)
            if got is None:
                out.append(f"budget {name} {METRICS[name][0]} {bound:g}: not measured ({_UNMEASURED[name]})")
            elif (got < bound) if METRICS[name][0] == ">=" else (got > bound):
                out.append(f"budget: {METRICS[name][3]} is {got:.4g}, the budget asks {METRICS[name][0]} {bound:g}")
        return out


_UNMEASURED = {"agreement": "the model has no classification output",
               "sqnr": "no output was compared",
               "accuracy_drop": "the verification data has no labels: pass a folder per class or a labels.csv"}


def measured(compression: dict, accuracy: dict | None = None) -> dict:
    """The budget's metrics of one artifact: from its compression cost (edgekit.parity.cost_metrics,
    per output) and its labelled accuracy (edgekit.accuracy), None where not measured."""
    agree = [m["top1_agreement"] for m in compression.values() if m.get("top1_agreement") is not None]
    sqnr = [m["sqnr_db"] for m in compression.values() if m.get("sqnr_db") is not None]
    drop = None if not accuracy else accuracy.get("drop_points")
    return {"agreement": min(agree) if agree else None, "sqnr": min(sqnr) if sqnr else None, "accuracy_drop": drop}
