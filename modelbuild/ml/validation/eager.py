"""The original model of an LLM checkpoint, in its original implementation, eager.

- HF layout (``config.json`` + safetensors): ``transformers``
  ``AutoModelForCausalLM`` (e.g. ``LlamaForCausalLM``) and ``AutoTokenizer``.
- GGUF: the same ``transformers`` classes with ``gguf_file=``.
- Meta layout: ExecuTorch's llama ``Transformer`` through
  ``modelbuild.ml.llm.load_llm`` (the Meta reference architecture).

Example::

    lm = load_eager_lm(Path("out/tiny-llama-ckpt"))
    ids = lm.encode("Hello", chat=True)
    logits = lm.logits(ids)          # numpy [len(ids), vocab]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["EagerLM", "load_eager_lm"]


@dataclass
class EagerLM:
    """A causal LM seen as: encode, full-sequence logits, decode."""

    implementation: str
    vocab_size: int
    context_len: int
    bos_id: int | None
    eos_ids: list[int]
    _forward: Callable[[list[int]], np.ndarray]
    _tokenizer: Any
    has_chat_template: bool = False
    info: dict = field(default_factory=dict)

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits for every position of ``ids``: float32 ``[len(ids), vocab]``."""
        return self._forward(list(ids))

    def render_prompt(self, text: str, chat: bool) -> str:
        """The prompt text, with the chat template applied when asked and available."""
        if chat and self.has_chat_template:
            return self._tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        return text

    def encode(self, text: str, *, templated: bool = False) -> list[int]:
        """Token ids; a templated prompt already carries its special tokens."""
        enc = self._tokenizer(text, add_special_tokens=not templated)
        return list(enc["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(list(ids))

    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation (argmax), stopping after an EOS token."""
        seq = list(prompt_ids)
        out: list[int] = []
        for _ in range(max_new_tokens):
            if len(seq) >= self.context_len:
                break
            nxt = int(self.logits(seq)[-1].argmax())
            out.append(nxt)
            seq.append(nxt)
            if nxt in self.eos_ids:
                break
        return out


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _load_transformers(path: Path, gguf_file: str | None, dtype: str = "fp32") -> EagerLM:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, _TORCH_DTYPES[dtype]), **kw).eval()
    cfg = model.config

    def forward(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0]
        return out.float().numpy()

    gen = getattr(model, "generation_config", None)
    eos = _ids(getattr(gen, "eos_token_id", None)) or _ids(cfg.eos_token_id)
    bos = getattr(cfg, "bos_token_id", None)
    if bos is None:
        bos = tokenizer.bos_token_id
    return EagerLM(
        implementation=f"transformers {type(model).__name__}",
        vocab_size=int(cfg.vocab_size),
        context_len=int(getattr(cfg, "max_position_embeddings", 2048)),
        bos_id=None if bos is None else int(bos),
        eos_ids=eos,
        _forward=forward,
        _tokenizer=tokenizer,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


class _RunnerTokenizer:
    """Adapts a pytorch_tokenizers tokenizer (the runner's own) to EagerLM's calls."""

    chat_template = None
    bos_token = None

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, text: str, add_special_tokens: bool = True):
        return {"input_ids": list(self.tok.encode(text, bos=add_special_tokens, eos=False))}

    def decode(self, ids):
        return self.tok.decode(list(ids))


#: Positions the Meta reference model is built for (no KV cache: only rotary tables).
META_CONTEXT = 2048


def _load_meta(path: Path, dtype: str = "fp32") -> EagerLM:
    # The Meta layout's reference implementation is the llama architecture as
    # ExecuTorch defines it; modelbuild.ml.llm maps the weights onto it.
    import torch
    from pytorch_tokenizers import get_tokenizer

    from modelbuild.ml.llm import load_llm

    model, args, tokenizer_path = load_llm(path, dtype=dtype, max_seq_len=META_CONTEXT, use_kv_cache=False,
                                           generate_full_logits=True)
    model.eval()
    if tokenizer_path is None:
        raise FileNotFoundError("the Meta checkpoint has no tokenizer file")
    tok = get_tokenizer(str(tokenizer_path))

    def forward(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.tensor([ids], dtype=torch.long))
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(-1, out.shape[-1]).float().numpy()

    bos = getattr(tok, "bos_id", None)
    eos = [e for e in (getattr(tok, "stop_tokens", None) or []) if e is not None]
    if not eos and getattr(tok, "eos_id", None) is not None:
        eos = _ids(tok.eos_id)
    gen = path / "generation_config.json"
    if gen.exists():  # Meta downloads from the hub carry one; it names every stop token
        eos = _ids(json.loads(gen.read_text()).get("eos_token_id")) or eos
    eos = sorted(set(eos))
    return EagerLM(
        implementation="executorch llama Transformer (Meta reference)",
        vocab_size=int(args.vocab_size),
        context_len=int(args.max_seq_len),
        bos_id=None if bos is None else int(bos),
        eos_ids=[int(e) for e in eos],
        _forward=forward,
        _tokenizer=_RunnerTokenizer(tok),
    )


def load_eager_lm(path: Path, dtype: str = "fp32") -> EagerLM:
    """Load the original model of a checkpoint artifact (see module docstring).

    ``dtype`` is the precision it computes in: fp32 (the default, the most
    faithful reference), or bf16/fp16 to halve the memory of a large model.
    """
    meta = json.loads((path / "checkpoint.json").read_text()) if (path / "checkpoint.json").exists() else {}
    fmt = meta.get("format")
    if fmt is None:
        if (path / "config.json").exists():
            fmt = "hf"
        elif list(path.glob("*.gguf")):
            fmt = "gguf"
        elif (path / "params.json").exists():
            fmt = "meta"
    if fmt == "hf":
        lm = _load_transformers(path, None, dtype)
    elif fmt == "gguf":
        files = sorted(p.name for p in path.glob("*.gguf"))
        if not files:
            raise FileNotFoundError(f"no .gguf file in {path.name}")
        lm = _load_transformers(path, files[0], dtype)
    elif fmt == "meta":
        lm = _load_meta(path, dtype)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}")
    lm.info = {k: meta[k] for k in ("format", "family", "synthetic", "source", "revision") if k in meta}
    lm.info.setdefault("format", fmt)
    lm.info["dtype"] = dtype
    return lm
