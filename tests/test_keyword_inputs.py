"""A model called with keyword inputs of different dtypes (a text encoder's input_ids and
attention_mask), given to the API with example_inputs and data keyed by input name."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.errors import UserError


class KeywordEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(50, 8), nn.Linear(8, 3)

    def forward(self, *, attention_mask, input_ids):  # keyword-only, in another order than the dict
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        return {"pooled": self.head(h.sum(1) / attention_mask.sum(1, keepdim=True).clamp(min=1))}


def _batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, (n, 6)).astype(np.int64)
    mask = (np.arange(6)[None] < rng.integers(2, 7, (n, 1))).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def test_keyword_inputs_name_the_spec_and_verify(tmp_path):
    torch.manual_seed(0)
    model = KeywordEncoder().eval()
    example = {k: torch.from_numpy(v[:1]) for k, v in _batch(1).items()}
    bundle = edgekit.export(model, example, targets=["onnx", "executorch"], data=_batch(12), out=tmp_path / "kw")
    spec = bundle.manifest["model"]["spec"]
    assert [(t["name"], t["dtype"]) for t in spec["inputs"]] == [("input_ids", "int64"), ("attention_mask", "int64")]
    assert [t["name"] for t in spec["outputs"]] == ["pooled"]
    assert bundle.passed, {k: (r.status, r.failures, r.error) for k, r in bundle.results.items()}
    x = _batch(3, seed=1)
    (got,) = bundle.run("onnx", x["input_ids"], x["attention_mask"])
    (by_name,) = bundle.run("onnx", attention_mask=x["attention_mask"], input_ids=x["input_ids"])
    assert np.array_equal(got, by_name)
    with pytest.raises(UserError):
        bundle.run("onnx", x["input_ids"], attention_mask=x["attention_mask"])
    with torch.no_grad():
        want = model(**{k: torch.from_numpy(v) for k, v in x.items()})["pooled"].numpy()
    assert np.abs(got - want).max() < 1e-5
    rows = [{**{k: v[i:i + 1] for k, v in _batch(4, seed=2).items()}, "label": i} for i in range(4)]
    again = edgekit.verify(bundle.path, data=rows)  # a list of dicts, with a key the model does not take
    assert again.passed and again.report["data"]["count"] == 4


def test_data_without_an_input_name_is_a_coded_error(tmp_path):
    model = KeywordEncoder().eval()
    example = {k: torch.from_numpy(v[:1]) for k, v in _batch(1).items()}
    with pytest.raises(UserError) as err:
        edgekit.export(model, example, targets=["onnx"], data={"input_ids": _batch(4)["input_ids"]}, out=tmp_path / "x")
    assert err.value.code == "E-DATA-SHAPE" and "attention_mask" in err.value.what
