"""Labels of a data set: the class index of each sample, for labelled accuracy (edgekit.accuracy).

A data folder is labelled in one of two ways:
- ``labels.csv`` at its top: a header ``file,label``, then one row per sample file (its path relative
  to the folder, as the report's sources name it); the label is a class index or a class name (a
  labels.csv without that header is some other file and is ignored, as every non-sample file is);
- one sub-folder per class (the torchvision ImageFolder layout: ``data/<class>/<file>``), when
  every sample sits exactly one folder deep and there are at least two such folders.
A class name maps to an index by the model's labels (``ModelSpec.labels``, case-insensitive); a
folder named by an integer is that index; a model without labels takes the sorted folder names
as classes 0..N-1, as torchvision's ImageFolder does. A per-class layout whose folder names are
not classes of a labelled model is left unlabelled and the note says so (folders may only group
files); a labels.csv that does not fit is an error (E-DATA-LABELS), as the user asked for it.
Everything here is untrusted input: the CSV's size is bounded and every value checked.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from edgekit.errors import UserError

LABELS_FILE = "labels.csv"
IN_MEMORY = "labels from the item after the inputs"  # the note of (x, y) batches' labels (edgekit.data.samples_from)
MAX_LABELS_BYTES = 8 << 20
MAX_CLASS = 1_000_000  # a class index above this is a typo, not a class


def folder_labels(root: Path, sources, kind: str, spec) -> tuple[tuple[int, ...] | None, str]:
    """-> (one class index per sample or None, a note on where they came from); a text sample's
    source is ``file:line``, labelled by its file."""
    files = [s.rsplit(":", 1)[0] for s in sources] if kind == "text" else list(sources)
    table = root / LABELS_FILE
    given = _read_csv(table) if table.is_file() else None
    if given is not None:
        missing = [f for f in files if f not in given]
        if missing:
            raise UserError("E-DATA-LABELS", f"{table} has no row for {len(missing)} sample file(s), e.g. {missing[0]}",
                            "add a row `file,label` for every sample file, or remove labels.csv")
        names = {given[f] for f in files}
        index = _class_index(names, spec, str(table))
        if index is None:
            raise UserError("E-DATA-LABELS", f"{table} names classes the model does not have: "
                            f"{', '.join(sorted(n for n in names if not n.isdigit())[:5])}",
                            f"use class indices or the model's class names (e.g. {', '.join((spec.labels or ('0', '1'))[:3])})")
        return tuple(index[given[f]] for f in files), f"labels from {LABELS_FILE}"
    parts = [Path(f).parts for f in files]
    classes = {p[0] for p in parts}
    if not parts or any(len(p) != 2 for p in parts) or len(classes) < 2:
        return None, ""
    index = _class_index(classes, spec, str(root))
    if index is None:
        return None, (f"the data's sub-folders ({', '.join(sorted(classes)[:4])}...) are not classes of the model: "
                      "no labelled accuracy (name them by class index or by the model's class names)")
    how = "sorted folder names as classes 0..N-1, torchvision's ImageFolder order" if not spec.labels and not all(
        c.isdigit() for c in classes) else "folder names as class names or indices"
    return tuple(index[p[0]] for p in parts), f"labels from one folder per class ({len(classes)} classes; {how})"


def round_robin(labels) -> list[int]:
    """Sample order that takes one sample of each class in turn (each class in its sorted file order),
    so the first part (calibration) and the held-out part (verification) both mix every class."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    order = []
    for k in range(max(map(len, queues), default=0)):
        order += [q[k] for q in queues if k < len(q)]
    return order


def _class_index(names: set[str], spec, where: str) -> dict[str, int] | None:
    """Class name -> index, or None when a name is neither an index nor one of the model's classes."""
    if all(n.isdigit() for n in names):
        out = {n: int(n) for n in names}
        if max(out.values()) > MAX_CLASS:
            raise UserError("E-DATA-LABELS", f"{where}: class index {max(out.values())} is out of range", "use indices 0..N-1")
        return out
    if not spec.labels:
        return {n: i for i, n in enumerate(sorted(names))}
    lookup = {label.lower(): i for i, label in reversed(list(enumerate(spec.labels)))}
    out = {n: int(n) if n.isdigit() else lookup.get(n.lower(), -1) for n in names}
    return None if any(v < 0 for v in out.values()) else out


def _read_csv(path: Path) -> dict[str, str] | None:
    try:
        raw = path.read_bytes()[: MAX_LABELS_BYTES + 1]
    except OSError as exc:
        raise UserError("E-DATA-UNREADABLE", f"cannot read {path}: {exc}", "check the file's permissions") from exc
    if len(raw) > MAX_LABELS_BYTES:
        raise UserError("E-DATA-LABELS", f"{path} is larger than {MAX_LABELS_BYTES >> 20} MiB", "keep one short row per sample")
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError("E-DATA-LABELS", f"cannot read {path} as UTF-8 CSV: {exc}", "save it as UTF-8 `file,label` rows") from exc
    if not rows or [c.strip().lower() for c in rows[0]] != ["file", "label"]:
        return None  # another file of that name (notes, a class list): not a labels table, not an error
    out: dict[str, str] = {}
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise UserError("E-DATA-LABELS", f"{path} line {n} is not `file,label`: {','.join(row)[:80]!r}", "write one `file,label` per line")
        out[row[0].strip()] = row[1].strip()
    return out


def check_labels(labels, n_classes: int | None, where: str) -> None:
    """Labels that the model's class output cannot score are refused before any work (E-DATA-LABELS)."""
    if labels is None:
        return
    if n_classes is None:
        raise UserError("E-DATA-LABELS", f"{where} has labels, but the model has no classification output to score them",
                        "drop the labels (or the per-class folders), or give the task as classification")
    bad = sorted({x for x in labels if not 0 <= x < n_classes})
    if bad:
        raise UserError("E-DATA-LABELS", f"{where}: class index {bad[0]} is outside the model's {n_classes} classes",
                        f"use class indices 0..{n_classes - 1}")


def from_manifest(raw, count: int) -> tuple[int, ...] | None:
    """A manifest's ``verification_inputs.labels`` (untrusted): None, or ``count`` class indices."""
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != count or not all(
            isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_CLASS for x in raw):
        raise UserError("E-BUNDLE-INVALID", f"manifest 'verification_inputs.labels' must be {count} class indices",
                        "re-export the bundle; do not edit manifest.json by hand")
    return tuple(raw)
