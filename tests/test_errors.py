import re
from pathlib import Path

import pytest

from edgekit.errors import CODES, InternalError, UnsupportedOpError, UserError

SRC = Path(__file__).resolve().parents[1]


def test_user_error_reads_code_what_fix():
    e = UserError("E-DATA-EMPTY", "calibration_data/images has no images", "add files or pass --data DIR")
    assert str(e) == "E-DATA-EMPTY: calibration_data/images has no images; add files or pass --data DIR"
    assert e.to_dict()["code"] == "E-DATA-EMPTY"


def test_unlisted_code_is_an_internal_error():
    with pytest.raises(InternalError):
        UserError("E-NOPE", "x", "y")


def test_unsupported_op_names_op_node_and_target():
    e = UnsupportedOpError("ncnn", "aten::foo", "layer_3")
    assert e.code == "E-OP-UNSUPPORTED" and "aten::foo" in str(e) and "layer_3" in str(e) and "ncnn" in str(e)


def test_every_code_raised_in_the_source_is_listed():
    used = set()
    for folder in ("edgekit", "converters"):
        for f in (SRC / folder).rglob("*.py"):
            used |= set(re.findall(r'"(E-[A-Z0-9-]+)"', f.read_text()))
    assert used - set(CODES) == set()
