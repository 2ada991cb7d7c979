"""ExecuTorch developer tools for built programs: ETRecord, ETDump profiles, drift, bundled programs.

Modules (all import torch/ExecuTorch inside their functions, except the light ones marked):

- :mod:`.etrecord`: write the ETRecord beside a lowered program deterministically, read it back.
- :mod:`.inputs`: the inputs a program runs on, taken from a ``reference`` artifact.
- :mod:`.etdump`: run a ``.pte`` with ETDump on, and turn the dump into rows per instruction.
- :mod:`.memory`: the memory plan's arena sizes, read from the ``.pte`` header.
- :mod:`.drift`: the first operator whose output drifts from the program the lowering started from.
- :mod:`.bundled`: ExecuTorch bundled programs (inputs and expected outputs inside the file).
- :mod:`.report` (light): profile.json, profile.md and the SVG bar chart.
"""
