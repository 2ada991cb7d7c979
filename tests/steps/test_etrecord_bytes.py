"""etrecord.bin is byte-for-byte reproducible: ExecuTorch writes object addresses into it.

`verify --rebuild` (bench/bench_verify.py) found the lowered tiny llama's
etrecord.bin differing between two builds: ``export_graph_id`` is
``id(graph)`` and every node's ``from_node`` provenance carries the
``graph_id`` of the graphs it came through. save_etrecord renumbers them;
these tests use stand-in ETRecords (zips shaped like ExecuTorch's), so they
need no ML stack.
"""

from __future__ import annotations

import json
import zipfile

from modelbuild.ml.profile.etrecord import save_etrecord


class FakeETRecord:
    """Writes a zip shaped like ``ETRecord.save``: entries in its order, provenance as JSON in a JSON string."""

    def __init__(self, export_id: int, node_ids: list[int]):
        self.export_id, self.node_ids = export_id, node_ids

    def save(self, path: str) -> None:
        nodes = [{"name": f"n{i}", "meta": {"from_node": json.dumps([{"name": f"n{i}", "graph_id": gid}])}}
                 for i, gid in enumerate(self.node_ids)]
        with zipfile.ZipFile(path, "w") as z:  # wall-clock dates, as ExecuTorch writes them
            z.writestr("ETRECORD_V0", b"")
            z.writestr("edge_dialect_exported_program/forward", json.dumps({"nodes": nodes}).encode())
            z.writestr("export_graph_id", json.dumps(self.export_id).encode())


def _ids(path):
    with zipfile.ZipFile(path) as z:
        nodes = json.loads(z.read("edge_dialect_exported_program/forward"))["nodes"]
        export = json.loads(z.read("export_graph_id"))
    return export, [json.loads(n["meta"]["from_node"])[0]["graph_id"] for n in nodes]


def test_two_builds_with_other_addresses_write_the_same_bytes(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    save_etrecord(FakeETRecord(140278121010576, [140278079804496, 140278079804496, 140278093588240]), a)
    save_etrecord(FakeETRecord(139911112223334, [139911000000016, 139911000000016, 139911777777792]), b)
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_renumbering_keeps_which_nodes_share_a_graph(tmp_path):
    """The Inspector matches nodes to the export graph by these ids: equal stays equal, different stays different."""
    out = tmp_path / "e.bin"
    save_etrecord(FakeETRecord(222, [111, 222, 111, 333]), out)
    export, nodes = _ids(out)
    assert nodes[0] == nodes[2] != nodes[1]
    assert nodes[1] == export and nodes[3] not in (nodes[0], export)
    save_etrecord(FakeETRecord(999, [111, 222]), out)  # an export graph no node came through
    export, nodes = _ids(out)
    assert export not in nodes
