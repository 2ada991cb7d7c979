"""Execute an artifact on the reference's inputs: exported program, .pte, .mlpackage.

:func:`open_runner` returns an :class:`LLMRunner` (token-by-token logits and
greedy decoding over the ExecuTorch LLM contract ``forward(tokens,
input_pos)``) or a :class:`ModuleRunner` (outputs for given inputs), each with
its file size and load time.

Example::

    runner = open_runner("pte", Path("out/tiny-llama-pte"))
    logits = runner.score([0, 40, 297])      # numpy [3, vocab]
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["LLMRunner", "ModuleRunner", "open_runner", "apple_delegates", "dir_size"]

_STATIC_NO_KV = ("the LLM takes a fixed number of tokens and has no KV cache, so logits per position "
                 "cannot be read from it: export it with use_kv_cache or enable_dynamic_shape to validate it")

#: Delegates that only run on Apple platforms (a .pte holding them needs macOS).
APPLE_BACKENDS = ("coreml", "mps")


def dir_size(path: Path) -> int:
    """Total bytes of the files under ``path`` (or of the file itself)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file())


def apple_delegates(pte_dir: Path) -> list[str]:
    """Apple-only backends the .pte delegates to, from partition.json/program.json."""
    text = ""
    for name in ("partition.json", "program.json"):
        f = pte_dir / name
        if f.exists():
            text += f.read_text().lower()
    found = []
    for backend in APPLE_BACKENDS:
        # "coremlbackend", "backend": "coreml", "mpsbackend", ...
        if f'"{backend}' in text or f"{backend}backend" in text:
            found.append(backend)
    return found


def _load_extension_ops() -> None:
    # Programs may hold ExecuTorch's custom sdpa/kv-cache ops and quantized
    # kernels; they must be registered before a program using them loads.
    for mod in ("executorch.extension.llm.custom_ops.custom_ops", "executorch.kernels.quantized"):
        try:
            __import__(mod)
        except Exception:  # noqa: BLE001 - absent in some builds; loading then fails clearly
            pass


def _last_logits(out) -> np.ndarray:
    import torch
    from torch.utils import _pytree

    leaves = [x for x in _pytree.tree_flatten(out)[0] if isinstance(x, torch.Tensor)]
    t = leaves[0].detach()
    if t.dtype != torch.float32:
        t = t.float()
    return t.reshape(-1, t.shape[-1])[-1].numpy()


def _full_sequence_steps(forward: Callable[[Any], Any]) -> Callable[[], Callable[[int, int], np.ndarray]]:
    """Step factories for a program without a KV cache: each step reruns the
    whole sequence so far (truncated to ``pos``) and returns the last logits."""
    import torch

    def make_step():
        seq: list[int] = []

        def step(tok: int, pos: int) -> np.ndarray:
            del seq[pos:]
            seq.append(tok)
            return _last_logits(forward(torch.tensor([seq], dtype=torch.long)))
        return step
    return make_step


class LLMRunner:
    """An LLM artifact behind one call: ``step(token, pos) -> logits``.

    ``make_step`` builds a fresh stepping function (positions restart at 0;
    stale KV-cache entries beyond the current position are masked by the model).
    """

    kind = "llm"

    def __init__(self, *, artifact_kind: str, path: Path, size_bytes: int, load_time_s: float,
                 max_seq_len: int, make_step: Callable[[], Callable[[int, int], np.ndarray]],
                 tokenizer: Path | None = None, pte: Path | None = None, info: dict | None = None):
        self.artifact_kind = artifact_kind
        self.path = path
        self.size_bytes = size_bytes
        self.load_time_s = load_time_s
        self.max_seq_len = max_seq_len
        self.make_step = make_step
        self.tokenizer = tokenizer
        self.pte = pte
        self.info = info or {}

    def score(self, ids: list[int]) -> tuple[np.ndarray, float]:
        """Teacher-forced logits for every position of ``ids`` and the seconds taken."""
        step = self.make_step()
        rows = []
        t0 = time.perf_counter()
        for pos, tok in enumerate(ids):
            rows.append(step(int(tok), pos))
        return np.stack(rows).astype(np.float32), time.perf_counter() - t0

    def greedy(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: list[int]) -> dict:
        """Greedy continuation, timed: prefill (prompt) and decode (new tokens)."""
        step = self.make_step()
        t0 = time.perf_counter()
        logits = None
        for pos, tok in enumerate(prompt_ids):
            logits = step(int(tok), pos)
        t1 = time.perf_counter()
        out: list[int] = []
        pos = len(prompt_ids)
        while logits is not None and len(out) < max_new_tokens:
            nxt = int(np.argmax(logits))
            out.append(nxt)
            if nxt in eos_ids or pos >= self.max_seq_len or len(out) == max_new_tokens:
                break
            logits = step(nxt, pos)
            pos += 1
        t2 = time.perf_counter()
        decoded = max(len(out) - 1, 0)  # the first new token comes from the prefill
        return {"tokens": out, "prefill_s": t1 - t0, "decode_s": t2 - t1,
                "prefill_tokens": len(prompt_ids), "decode_tokens": decoded}


class ModuleRunner:
    """A generic-module artifact: ``run(inputs) -> outputs`` on numpy arrays."""

    kind = "module"

    def __init__(self, *, artifact_kind: str, path: Path, size_bytes: int, load_time_s: float,
                 run: Callable[[list[np.ndarray]], list[np.ndarray]]):
        self.artifact_kind = artifact_kind
        self.path = path
        self.size_bytes = size_bytes
        self.load_time_s = load_time_s
        self.run = run


def _torch_inputs(arrays: list[np.ndarray]):
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def _usable(max_seq: int, use_kv_cache: bool) -> int:
    """Positions we may feed. export_llm's dynamic-shape spec for KV-cache models
    bounds ``input_pos`` at ``max_context_len - 2`` (the exported program asserts
    it), so the last cache slot is never written; stay below it for every artifact
    so that all stages are compared on the same positions."""
    return max_seq - 1 if use_kv_cache else max_seq


def _kv_call(example: tuple) -> Callable[[Any, Any, Any], Any]:
    """How to call a module whose example inputs are (tokens, pos) or (tokens, {"input_pos": pos})."""
    if len(example) >= 2 and isinstance(example[1], dict):
        return lambda m, tok, pos: m(tok, {**example[1], "input_pos": pos})
    return lambda m, tok, pos: m(tok, pos)


def _open_exported(path: Path) -> LLMRunner | ModuleRunner:
    import torch

    from modelbuild.ml.program import PROGRAM_FILE, load_program

    _load_extension_ops()
    t0 = time.perf_counter()
    ep, info, example = load_program(path)
    module = ep.module()
    load_time = time.perf_counter() - t0
    size = (path / PROGRAM_FILE).stat().st_size
    if info.kind != "llm":
        from .reference import flatten_outputs, to_numpy

        def run(arrays):
            with torch.no_grad():
                return [to_numpy(t) for t in flatten_outputs(module(*_torch_inputs(arrays)))]

        return ModuleRunner(artifact_kind="exported-program", path=path, size_bytes=size,
                            load_time_s=load_time, run=run)
    # With a KV cache the bound on positions is the cache length (max_context_len).
    max_seq = int((info.use_kv_cache and (info.max_context_len or info.metadata.get("get_max_context_len")))
                  or info.max_seq_len or info.metadata.get("get_max_seq_len") or 2048)
    if info.use_kv_cache:
        call = _kv_call(example)

        def make_step():
            def step(tok: int, pos: int) -> np.ndarray:
                with torch.no_grad():
                    out = call(module, torch.tensor([[tok]], dtype=torch.long), torch.tensor([pos], dtype=torch.long))
                return _last_logits(out)
            return step
    else:
        if not (info.enable_dynamic_shape or info.dynamic_shapes):
            raise ValueError(_STATIC_NO_KV)

        def forward(tokens):
            with torch.no_grad():
                return module(tokens)

        make_step = _full_sequence_steps(forward)
    tokenizer = path / info.tokenizer if info.tokenizer else None
    return LLMRunner(artifact_kind="exported-program", path=path, size_bytes=size, load_time_s=load_time,
                     max_seq_len=_usable(max_seq, info.use_kv_cache), make_step=make_step, tokenizer=tokenizer,
                     info={"dtype": info.dtype, "quantization": info.quantization})


def _pte_meta(program, names: set[str]) -> dict:
    meta = {}
    for name in ("get_max_seq_len", "get_max_context_len", "use_kv_cache", "enable_dynamic_shape", "get_bos_id", "get_eos_ids"):
        if name in names:
            try:
                meta[name] = [v.item() if hasattr(v, "item") else v for v in program.load_method(name).execute([])]
            except Exception:  # noqa: BLE001 - a metadata method we cannot read is just absent
                pass
    return meta


def _open_pte(path: Path) -> LLMRunner | ModuleRunner:
    import torch
    from executorch.runtime import Runtime

    _load_extension_ops()
    pte = path / "model.pte"
    if not pte.exists():
        raise FileNotFoundError("model.pte missing from the pte artifact")
    info = json.loads((path / "program.json").read_text()) if (path / "program.json").exists() else {}
    t0 = time.perf_counter()
    program = Runtime.get().load_program(pte)
    method = program.load_method("forward")
    load_time = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in sorted(path.iterdir()) if p.suffix in (".pte", ".ptd"))
    names = set(program.method_names)
    meta = _pte_meta(program, names)
    is_llm = info.get("kind") == "llm" or ("use_kv_cache" in meta and "get_max_seq_len" in meta)
    if not is_llm:
        def run(arrays):
            outs = method.execute(_torch_inputs(arrays))
            from .reference import to_numpy

            return [to_numpy(t) for t in outs if isinstance(t, torch.Tensor)]

        return ModuleRunner(artifact_kind="pte", path=path, size_bytes=size, load_time_s=load_time, run=run)
    use_kv = bool(meta.get("use_kv_cache", [info.get("use_kv_cache", True)])[0])
    max_seq = int(meta.get("get_max_seq_len", [info.get("max_seq_len") or 128])[0])
    if use_kv and "get_max_context_len" in meta:
        max_seq = int(meta["get_max_context_len"][0])
    if use_kv:
        def make_step():
            def step(tok: int, pos: int) -> np.ndarray:
                out = method.execute([torch.tensor([[tok]], dtype=torch.long), torch.tensor([pos], dtype=torch.long)])
                return _last_logits(out)
            return step
    else:
        if not bool(meta.get("enable_dynamic_shape", [info.get("enable_dynamic_shape", False)])[0]):
            raise ValueError(_STATIC_NO_KV)

        make_step = _full_sequence_steps(lambda tokens: method.execute([tokens]))
    tok_name = info.get("tokenizer")
    tokenizer = path / tok_name if tok_name and (path / tok_name).exists() else None
    return LLMRunner(artifact_kind="pte", path=path, size_bytes=size, load_time_s=load_time,
                     max_seq_len=_usable(max_seq, use_kv),
                     make_step=make_step, tokenizer=tokenizer, pte=pte,
                     info={"backend": info.get("backend"), "metadata": meta})


def _open_mlpackage(path: Path) -> ModuleRunner:
    # macOS only: Core ML predictions. (Requirements keep this off other hosts.)
    import coremltools as ct

    pkg = path / "model.mlpackage"
    t0 = time.perf_counter()
    model = ct.models.MLModel(str(pkg))
    load_time = time.perf_counter() - t0
    spec = model.get_spec()
    in_names = [i.name for i in spec.description.input]
    out_names = [o.name for o in spec.description.output]

    def run(arrays):
        if len(arrays) != len(in_names):
            raise ValueError(f"the Core ML model takes {len(in_names)} inputs, the reference has {len(arrays)}")
        result = model.predict({n: a for n, a in zip(in_names, arrays)})
        return [np.asarray(result[n]) for n in out_names]

    return ModuleRunner(artifact_kind="mlpackage", path=path, size_bytes=dir_size(pkg), load_time_s=load_time, run=run)


def open_runner(kind: str, path: Path) -> LLMRunner | ModuleRunner:
    """Open an artifact of ``kind`` (exported-program, pte, mlpackage) for running."""
    if kind == "exported-program":
        return _open_exported(path)
    if kind == "pte":
        return _open_pte(path)
    if kind == "mlpackage":
        return _open_mlpackage(path)
    raise ValueError(f"cannot run artifacts of kind {kind!r}")
