"""The graph's own adjacency code agrees with networkx (which it replaced to
keep start-up cheap): build order, ancestors, descendants and cycles."""

from __future__ import annotations

import pytest
import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from modelbuild.graph import BuildGraph, _find_cycle

NAMES = [f"n{i}" for i in range(9)]


def _graph(edges: dict[str, set[str]]) -> BuildGraph:
    g = BuildGraph.__new__(BuildGraph)
    BuildGraph.__init__(g, recipes=None, nodes={n: None for n in edges}, edges=edges)
    return g


@st.composite
def dags(draw):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=9, unique=True))
    edges: dict[str, set[str]] = {n: set() for n in names}
    for i, consumer in enumerate(names):  # edges only from earlier names: acyclic
        for producer in draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []:
            edges[producer].add(consumer)
    return edges


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_order_and_reach_match_networkx(edges, data):
    g = _graph(edges)
    dag = g.dag
    wanted = data.draw(st.lists(st.sampled_from(sorted(edges)), min_size=1, unique=True))
    closure = set(wanted).union(*(nx.ancestors(dag, n) for n in wanted))
    assert g.closure(wanted) == list(nx.lexicographical_topological_sort(dag.subgraph(closure)))
    for n in edges:
        assert g.descendants(n) == nx.descendants(dag, n)
        assert g.producers(n) == sorted(dag.predecessors(n))
        assert g.consumers(n) == sorted(dag.successors(n))
    assert _find_cycle(edges) == []


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(dags(), st.data())
def test_a_back_edge_is_found_as_a_cycle(edges, data):
    names = sorted(edges)
    a = data.draw(st.sampled_from(names))
    b = data.draw(st.sampled_from(sorted({a} | nx.descendants(_graph(edges).dag, a))))
    edges[b].add(a)  # b is reachable from a (or is a): a cycle through a and b
    cycle = _find_cycle(edges)
    assert cycle and a in cycle and b in cycle
    assert all(cycle[(i + 1) % len(cycle)] in edges[x] for i, x in enumerate(cycle))
