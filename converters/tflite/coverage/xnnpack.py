"""MEASURED XNNPACK coverage of a .tflite: load it in the real LiteRT interpreter with and without the
XNNPACK delegate and read which nodes the delegate replaced.

How it is measured (ai-edge-litert 2.3.0, checked here): with the default op resolver the
interpreter applies XNNPACK at load; the python API then lists the model's own nodes followed by one
extra node named ``DELEGATE`` per delegated partition (the interpreter's node list keeps the
replaced nodes, it only stops scheduling them). With
``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`` there is no DELEGATE node. A delegate node's
inputs and outputs are the partition's boundary tensors; the nodes it replaced are exactly those on
a path from its inputs to its outputs (TFLite partitions are convex), found by walking producers
back from the outputs and stopping at the inputs. The interpreter's python API exposes nodes of the
primary subgraph only, so other subgraphs (control flow bodies) are not measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import InternalError, UserError

DELEGATE_NODE = "DELEGATE"


@dataclass(frozen=True)
class XnnpackMeasurement:
    nodes: int  # nodes of the primary subgraph (without delegates)
    partitions: tuple[tuple[int, ...], ...]  # node indices replaced by each delegate node
    delegate_nodes_without: int  # DELEGATE nodes when loaded without default delegates (expected 0)
    node_names: tuple[str, ...] = field(default=())

    @property
    def delegated(self) -> frozenset[int]:
        return frozenset(i for p in self.partitions for i in p)


def _interpreter(path: Path, with_delegate: bool):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        from edgekit.errors import missing_dependency

        raise missing_dependency("tflite", "ai_edge_litert", "tflite") from None
    resolver = OpResolverType.AUTO if with_delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = Interpreter(model_path=str(path), num_threads=1, experimental_op_resolver_type=resolver)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError("E-ARTIFACT-CORRUPT", f"the LiteRT interpreter cannot load {Path(path).name}: {first[:200]}",
                        "re-export the file; XNNPACK coverage is measured by loading it") from exc
    return interp


def _nodes(interp) -> list[dict]:
    out = []
    for d in interp._get_ops_details():  # noqa: SLF001 - the interpreter's only per-node view
        out.append({"name": d["op_name"], "inputs": [int(i) for i in d["inputs"] if int(i) >= 0],
                    "outputs": [int(i) for i in d["outputs"] if int(i) >= 0]})
    return out


def replaced_nodes(nodes: list[dict], n_model: int, delegate: dict) -> tuple[int, ...]:
    """Model nodes (indices < n_model) a delegate node stands for: walk producers back from its outputs
    until its inputs."""
    producer = {}
    for i in range(n_model):
        for t in nodes[i]["outputs"]:
            producer[t] = i
    boundary = set(delegate["inputs"])
    seen, stack = set(), [t for t in delegate["outputs"]]
    while stack:
        t = stack.pop()
        if t in boundary or t not in producer:
            continue
        i = producer[t]
        if i in seen:
            continue
        seen.add(i)
        stack.extend(nodes[i]["inputs"])
    return tuple(sorted(seen))


def measure(path: Path) -> XnnpackMeasurement:
    """Load the model twice (with / without XNNPACK) and return which nodes XNNPACK took."""
    path = Path(path)
    plain = _nodes(_interpreter(path, with_delegate=False))
    without = sum(1 for n in plain if n["name"] == DELEGATE_NODE)
    n_model = len(plain) - without
    nodes = _nodes(_interpreter(path, with_delegate=True))
    if [n["name"] for n in nodes[:n_model]] != [n["name"] for n in plain[:n_model]]:
        raise InternalError("the interpreter listed the model's nodes differently with and without XNNPACK")
    partitions = []
    for extra in nodes[n_model:]:
        if extra["name"] != DELEGATE_NODE:
            raise InternalError(f"unexpected node {extra['name']!r} after the model's nodes")
        partitions.append(replaced_nodes(nodes, n_model, extra))
    taken = [i for p in partitions for i in p]
    if len(taken) != len(set(taken)):
        raise InternalError("two XNNPACK partitions claim the same node")
    return XnnpackMeasurement(n_model, tuple(partitions), without, tuple(n["name"] for n in plain[:n_model]))
