"""A graph cut at its plugin nodes: the runs of standard nodes between them, and each plugin node on its own.

What the standard-ONNX tools cannot take is the plugin nodes, so the graph is split where they are: the precision
passes hand the standard nodes to ModelOpt and put the plugin nodes back after (convert.precision), and ONNX Runtime
runs each run of standard nodes as a session of its own with the plugin nodes on the CPU reference between them
(onnxruntime_ops.StagedSession). Both ask the same of the split: which values a run reads and which it must hand on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import onnx

from maskrt.contracts.plugins import ONNX_DOMAIN


@dataclass(frozen=True)
class NodeRun:
    """Consecutive nodes of a graph: standard ONNX nodes, or one plugin node."""

    nodes: tuple[int, ...]  # positions in graph.node
    plugin: bool  # one node of the plugins' domain
    reads: tuple[str, ...]  # values it reads that it does not make: graph inputs, initializers, earlier runs' values
    hands_on: tuple[str, ...]  # values it makes that a later run reads or that are wanted at the end
    done_with: tuple[str, ...]  # values it reads or makes that nothing after it reads


def split_at_plugins(graph: onnx.GraphProto, outputs: Collection[str] | None = None) -> list[NodeRun]:
    """The graph's nodes, in their order, as runs of standard nodes and single plugin nodes; `outputs`: the values
    wanted at the end (None: the graph's outputs)."""
    groups: list[tuple[bool, list[int]]] = []  # (a plugin node?, positions)
    for index, node in enumerate(graph.node):
        plugin = node.domain == ONNX_DOMAIN
        if groups and not plugin and not groups[-1][0]:
            groups[-1][1].append(index)
        else:
            groups.append((plugin, [index]))
    reads = [_reads(graph, group) for _, group in groups]
    wanted = {o.name for o in graph.output} if outputs is None else set(outputs)
    needed_after: list[set[str]] = []
    for read in reversed(reads):
        needed_after.insert(0, set(wanted))
        wanted |= set(read)
    runs = []
    for (plugin, group), read, after in zip(groups, reads, needed_after):
        writes = [value for index in group for value in graph.node[index].output if value]
        runs.append(
            NodeRun(
                nodes=tuple(group),
                plugin=plugin,
                reads=read,
                hands_on=tuple(value for value in writes if value in after),
                done_with=tuple(value for value in dict.fromkeys([*read, *writes]) if value not in after),
            )
        )
    return runs


def _reads(graph: onnx.GraphProto, group: list[int]) -> tuple[str, ...]:
    """The values the nodes of `group` read that they do not make themselves, in the order first read."""
    made = {value for index in group for value in graph.node[index].output}
    return tuple(dict.fromkeys(v for index in group for v in graph.node[index].input if v and v not in made))
