"""The memory plan of a ``.pte``: the arena sizes its methods' planned tensors live in.

ExecuTorch plans every intermediate tensor of a method into a few arenas at
lowering time (``non_const_buffer_sizes`` of each execution plan; arena 0 is
reserved and always 0). Their sum is the activation memory the app must give
the method: the figure to put next to the app's own memory. Only the
flatbuffer head of the file is read (the weights sit in segments after it),
so this is cheap even for a multi-gigabyte program.

Example::

    plan = memory_plan(Path("out/tiny-llama-pte/model.pte"))
    plan["forward"]   # {"arenas": [0, 4608], "total_bytes": 4608}
    instruction_names(Path("out/tiny-llama-pte/model.pte"))[3]   # "aten::slice_copy.Tensor_out"
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["memory_plan", "instruction_names", "read_program"]


def read_program(pte: Path):
    """The program's flatbuffer (the head of the file), as ExecuTorch's schema objects."""
    from executorch.exir._serialize._program import _flatbuffer_to_program, _get_extended_header

    with open(pte, "rb") as f:
        header = _get_extended_header(f.read(64))
        size = header.program_size if header is not None else Path(pte).stat().st_size
        f.seek(0)
        flatbuffer = f.read(size)
    return _flatbuffer_to_program(flatbuffer)


def memory_plan(pte: Path, program=None) -> dict[str, dict]:
    """Method name -> ``{"arenas": [bytes per arena], "total_bytes": sum}``."""
    program = program or read_program(pte)
    plans = {}
    for plan in program.execution_plan:
        arenas = [int(n) for n in plan.non_const_buffer_sizes]
        plans[plan.name] = {"arenas": arenas, "total_bytes": sum(arenas)}
    return dict(sorted(plans.items()))


def instruction_names(pte: Path, method: str = "forward", program=None) -> dict[int, str]:
    """Instruction index -> the kernel it calls (``aten::linear.out``, ``executorch_prim::et_view``).

    Read from the program itself, so every operator call is named even where
    the ETRecord has no entry for it (ops added by ``to_executorch``).
    """
    program = program or read_program(pte)
    names: dict[int, str] = {}
    for plan in program.execution_plan:
        if plan.name != method:
            continue
        index = 0
        for chain in plan.chains:
            for instruction in chain.instructions:
                op = getattr(instruction.instr_args, "op_index", None)
                if op is not None:
                    operator = plan.operators[op]
                    overload = operator.overload if operator.overload not in ("", "default") else ""
                    names[index] = operator.name + (f".{overload}" if overload else "")
                index += 1
    return names
