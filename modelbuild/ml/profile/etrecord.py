"""ETRecord files beside lowered programs: written deterministically, read back for the Inspector.

ExecuTorch's ``ETRecord`` (the exported program, the edge program and the
debug-handle maps of a lowering) is what its Inspector needs to name the
operators of an ETDump and to compare intermediate outputs with the program
the lowering started from. ``ETRecord.save`` writes a zip whose entries carry
the wall-clock time, and graph identities that are Python object addresses
(``export_graph_id`` and the ``graph_id`` of every node's ``from_node``
provenance), so the same lowering would give different bytes on every build.
:func:`save_etrecord` rewrites the entries with a fixed date and renumbers the
graph identities in order of first appearance (the same address gets the same
number everywhere, so the Inspector matches nodes exactly as before), so the
``lower`` artifact stays byte-for-byte reproducible.

Example::

    edge = to_edge_transform_and_lower(ep, partitioner=..., generate_etrecord=True)
    program = edge.to_executorch()
    save_etrecord(program.get_etrecord(), out / ETRECORD_FILE)
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from modelbuild.devtools import ETRECORD_FILE

__all__ = ["ETRECORD_FILE", "save_etrecord", "load_etrecord"]

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
#: a node's provenance is JSON inside a JSON string: ``\\"graph_id\\": 140278079804496``
_GRAPH_ID = re.compile(rb'(\\"graph_id\\": )(\d+)')
_EXPORT_GRAPH_ID = "export_graph_id"


class _GraphIds:
    """Object addresses -> 1, 2, 3, ... in order of first appearance."""

    def __init__(self) -> None:
        self.numbers: dict[bytes, bytes] = {}

    def number(self, address: bytes) -> bytes:
        return self.numbers.setdefault(address, str(len(self.numbers) + 1).encode())

    def renumber(self, data: bytes) -> bytes:
        return _GRAPH_ID.sub(lambda m: m.group(1) + self.number(m.group(2)), data)


def save_etrecord(etrecord, path: Path) -> int:
    """Write ``etrecord`` (an ``executorch.devtools.ETRecord``) to ``path`` with fixed entry dates; returns bytes.

    Written to a scratch file beside ``path`` first, then renamed: a failed
    write never leaves a half-written ETRecord in the artifact.
    """
    path = Path(path)
    raw = path.with_name(path.name + ".raw")
    tmp = path.with_name(path.name + ".tmp")
    try:
        etrecord.save(str(raw))
        ids = _GraphIds()
        with zipfile.ZipFile(raw) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as dst:
            infos = src.infolist()
            # The provenance first, so that the export graph's number is the one its nodes got.
            order = sorted(infos, key=lambda i: i.filename == _EXPORT_GRAPH_ID)
            contents = {}
            for info in order:
                data = src.read(info)
                if info.filename == _EXPORT_GRAPH_ID:
                    data = ids.number(data.strip())
                elif b"graph_id" in data:
                    data = ids.renumber(data)
                contents[info.filename] = data
            for info in infos:  # in ExecuTorch's own order
                entry = zipfile.ZipInfo(info.filename, date_time=_EPOCH)
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_STORED
                dst.writestr(entry, contents[info.filename])
        os.replace(tmp, path)
    finally:
        for scratch in (raw, tmp):
            scratch.unlink(missing_ok=True)
    return path.stat().st_size


def load_etrecord(path: Path):
    """The ETRecord at ``path`` (``executorch.devtools.parse_etrecord``)."""
    from executorch.devtools import parse_etrecord

    return parse_etrecord(str(path))


def graphs_of(edge) -> dict[str, dict[str, tuple[list[str], dict]]]:
    """A snapshot of an ``EdgeProgramManager``'s graphs for :func:`keep_debug_handles`.

    Per method, node name -> (the names of its call_function inputs, its
    provenance metadata). Passes may rewrite the graph in place, so this is
    a copy of the little it needs, not a reference.
    """
    keys = ("from_node", "debug_handle")
    return {m: {n.name: ([a.name for a in n.all_input_nodes if a.op == "call_function"],
                         {k: n.meta[k] for k in keys if k in n.meta})
                for n in edge.exported_program(m).graph_module.graph.nodes}
            for m in edge.methods}


def keep_debug_handles(before: dict[str, dict[str, tuple[list[str], dict]]], edge) -> int:
    """Give nodes a pass created the provenance of the nodes they replaced; returns how many.

    The ETRecord pairs each runtime instruction with the exported program's
    operator through the nodes' provenance (``from_node``, from which
    ``to_executorch`` derives debug handles). A pass that rewrites nodes
    (XNNPACK's ``ConvertToLinearPass`` turns ``permute + addmm`` into
    ``linear``) starts them a provenance of their own, so the Inspector
    could not name them. A new node takes the provenance of the node its
    users read before the pass (``before``: :func:`graphs_of` taken then).
    Node metadata is not serialized into the .pte, whose bytes stay the same.
    """
    fixed = 0
    for method, old in before.items():
        graph = edge.exported_program(method).graph_module.graph
        new_names = {n.name for n in graph.nodes}
        for node in graph.nodes:
            if node.op != "call_function" or node.name in old:
                continue
            for user in node.users:
                replaced = [a for a in old.get(user.name, ([], {}))[0] if a not in new_names]
                if replaced:
                    node.meta.update(old[replaced[-1]][1])
                    fixed += 1
                    break
    return fixed
