"""BERT-of-Theseus: the replacement probability follows its schedule, only successor layers train,
the detached successor is a plain stack; on a Hugging Face BERT encoder too."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.compress import theseus
from edgekit.compress.theseus import TheseusConfig, replace_probability
from edgekit.errors import UserError


class Stack(nn.Module):
    def __init__(self, n=6, width=8):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(n)])
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.blocks(x))


def test_constant_and_linear_schedules():
    c = TheseusConfig(3, "constant", p=0.4)
    assert [replace_probability(c, s) for s in (0, 10, 10_000)] == [0.4, 0.4, 0.4]
    lin = TheseusConfig(3, "linear", p_start=0.2, ramp_steps=100)
    assert [replace_probability(lin, s) for s in (0, 50, 100, 500)] == pytest.approx([0.2, 0.6, 1.0, 1.0])


@pytest.mark.parametrize("config,want", [
    (TheseusConfig(3, "constant", p=0.3), lambda s: 0.3),
    (TheseusConfig(3, "linear", p_start=0.1, ramp_steps=2000), lambda s: min(1.0, 0.1 + 0.9 * s / 2000)),
])
def test_empirical_replacement_rate_follows_the_schedule(config, want):
    model = Stack()
    stack = theseus.start(model, "blocks", config)
    model.train()
    for window in (0, 1000, 2000):
        hits = []
        for step in range(window, window + 400):
            stack.set_step(step)
            model(torch.zeros(1, 8))
            hits += stack.last_choice
        expected = sum(want(s) for s in range(window, window + 400)) / 400
        assert abs(sum(hits) / len(hits) - expected) < 0.06


def test_only_successor_trains_and_finish_detaches_it():
    model = Stack()
    before = [p.clone() for p in model.blocks.parameters()]
    stack = theseus.start(model, "blocks", TheseusConfig(3, "constant", p=0.5))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in stack.successor.parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    for step in range(5):
        stack.set_step(step)
        opt.zero_grad()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, stack.predecessor.parameters()))
    theseus.finish(model, "blocks")
    assert isinstance(model.blocks, nn.Sequential) and len(model.blocks) == 3
    assert model(torch.randn(2, 8)).shape == (2, 3)


def test_bad_grouping_and_names_are_coded():
    with pytest.raises(UserError) as e:
        theseus.start(Stack(), "blocks", TheseusConfig(4))
    assert e.value.code == "E-COMPRESS-CONFIG"
    with pytest.raises(UserError) as e:
        theseus.start(Stack(), "layers", TheseusConfig(3))
    assert e.value.code == "E-COMPRESS-LAYER" and "'layers'" in str(e.value)
    with pytest.raises(UserError) as e:
        TheseusConfig(3, p=1.2)
    assert e.value.code == "E-COMPRESS-CONFIG"


def test_hugging_face_bert_encoder_6_to_3():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, attn_implementation="eager")
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg)
    ids, mask = torch.randint(1, 100, (2, 8)), torch.ones(2, 8, dtype=torch.long)
    stack = theseus.start(bert, "encoder.layer", TheseusConfig(3, "constant", p=1.0))
    bert.train()
    out = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    assert stack.last_choice == [True, True, True]
    out.sum().backward()
    assert all(p.grad is not None for p in stack.successor.parameters())
    assert all(p.grad is None for p in stack.predecessor.parameters())
    theseus.finish(bert, "encoder.layer")
    assert len(bert.encoder.layer) == 3 and bert.config.num_hidden_layers == 3
    bert.eval()
    assert bert(input_ids=ids, attention_mask=mask).last_hidden_state.shape == (2, 8, 16)
