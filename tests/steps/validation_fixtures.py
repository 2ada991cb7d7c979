"""Tiny model fixtures for the reference/validate tests.

They stand in for the fetch/export/lower steps so the validation tests do not
depend on them: a tiny random ``LlamaForCausalLM`` checkpoint in HF layout, the
same weights mapped onto ExecuTorch's llama ``Transformer`` (optionally with a
deliberately wrong rotary layout), exported with ``torch.export`` and lowered to
an XNNPACK ``.pte`` with the runtime metadata the LLM runner reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

EVAL_TEXT = Path(__file__).resolve().parents[2] / "modelbuild" / "data" / "eval_text.txt"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5)


def build_tokenizer(path: Path, vocab_size: int = 320) -> int:
    """Train a byte-level BPE on the eval text; returns the real vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([EVAL_TEXT.read_text()], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    tok.save(str(path))
    return tok.get_vocab_size()


def write_tiny_hf_checkpoint(out: Path, seed: int = 0, chat: bool = True) -> Path:
    """A random tiny llama in HF layout (config.json, model.safetensors, tokenizer.json)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out / "tokenizer.json")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, bos_token_id=0, eos_token_id=[1, 2], tie_word_embeddings=False, **TINY)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # random weights big enough that greedy decoding is not constant
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(out)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), bos_token=SPECIALS[0],
                                  eos_token=SPECIALS[2])
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    (out / "checkpoint.json").write_text(json.dumps(
        {"format": "hf", "family": "llama3_2", "synthetic": True, "source": "test"}, sort_keys=True))
    return out


def _unpermute(w, n_heads: int):
    """HF q/k rows (rotary halves) -> Meta layout (interleaved pairs)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def executorch_model(ckpt: Path, max_seq_len: int = 128, permute: bool = True):
    """ExecuTorch's llama Transformer (kv cache) holding the HF checkpoint's weights."""
    import torch
    from safetensors.torch import load_file
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs

    cfg = json.loads((ckpt / "config.json").read_text())
    args = ModelArgs(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
                     n_kv_heads=cfg["num_key_value_heads"], vocab_size=cfg["vocab_size"],
                     hidden_dim=cfg["intermediate_size"], norm_eps=cfg["rms_norm_eps"],
                     rope_freq_base=cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"], max_seq_len=max_seq_len, max_context_len=max_seq_len,
                     use_kv_cache=True, generate_full_logits=False, enable_dynamic_shape=False)
    sd = load_file(str(ckpt / "model.safetensors"))
    new = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if permute:
            q, k = _unpermute(q, args.n_heads), _unpermute(k, args.n_kv_heads)
        new.update({
            f"layers.{i}.attention.wq.weight": q, f"layers.{i}.attention.wk.weight": k,
            f"layers.{i}.attention.wv.weight": sd[p + "self_attn.v_proj.weight"],
            f"layers.{i}.attention.wo.weight": sd[p + "self_attn.o_proj.weight"],
            f"layers.{i}.feed_forward.w1.weight": sd[p + "mlp.gate_proj.weight"],
            f"layers.{i}.feed_forward.w2.weight": sd[p + "mlp.down_proj.weight"],
            f"layers.{i}.feed_forward.w3.weight": sd[p + "mlp.up_proj.weight"],
            f"layers.{i}.attention_norm.weight": sd[p + "input_layernorm.weight"],
            f"layers.{i}.ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        })
    model = construct_transformer(args).eval()
    missing, unexpected = model.load_state_dict(new, strict=False)
    assert not unexpected and all("cache" in m or "mask" in m or "freqs" in m for m in missing), missing
    return model, args


def export_llm_program(ckpt: Path, out: Path, max_seq_len: int = 128, permute: bool = True) -> Path:
    """An exported-program artifact of the tiny llama (tokens [1,1] + input_pos)."""
    import torch
    from modelbuild.ml.program import ProgramInfo, save_program

    model, args = executorch_model(ckpt, max_seq_len, permute)
    example = (torch.tensor([[0]], dtype=torch.long), {"input_pos": torch.tensor([0], dtype=torch.long)})
    with torch.no_grad():
        ep = torch.export.export(model, example, strict=False)
    metadata = {"get_bos_id": 0, "get_eos_ids": [1, 2], "get_max_seq_len": max_seq_len,
                "get_max_context_len": max_seq_len, "get_n_layers": args.n_layers,
                "get_vocab_size": args.vocab_size, "use_kv_cache": True, "use_sdpa_with_kv_cache": False,
                "enable_dynamic_shape": False}
    info = ProgramInfo(kind="llm", family="llama3_2", max_seq_len=max_seq_len, max_context_len=max_seq_len,
                       use_kv_cache=True, metadata=metadata)
    save_program(out, ep, info, example, tokenizer=ckpt / "tokenizer.json")
    return out


def lower_pte(program: Path, out: Path) -> Path:
    """Lower an exported-program artifact to an XNNPACK .pte artifact."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from modelbuild.ml.program import load_program

    ep, info, _ = load_program(program)
    edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                       constant_methods=info.metadata or None)
    et = edge.to_executorch()
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.pte").write_bytes(et.buffer)
    if info.tokenizer:
        shutil.copyfile(program / info.tokenizer, out / info.tokenizer)
    (out / "program.json").write_text(json.dumps(
        {"kind": info.kind, "metadata": info.metadata, "tokenizer": info.tokenizer, "backend": "xnnpack",
         "max_seq_len": info.max_seq_len, "use_kv_cache": info.use_kv_cache}, sort_keys=True))
    (out / "partition.json").write_text(json.dumps({"backends": {"XnnpackBackend": {}}}, sort_keys=True))
    return out


class TinyNet:
    """Factory namespace for a tiny generic module."""

    @staticmethod
    def make(seed: int = 0):
        import torch

        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)).eval()


def export_module_program(out: Path, seed: int = 0, scale_noise: float = 0.0) -> Path:
    """An exported-program artifact of a tiny MLP (kind "module").

    ``scale_noise`` perturbs the weights: a deliberately broken variant.
    """
    import torch
    from modelbuild.ml.program import ProgramInfo, save_program

    model = TinyNet.make(seed)
    if scale_noise:
        g = torch.Generator().manual_seed(99)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale_noise)
    example = (torch.randn(2, 16, generator=torch.Generator().manual_seed(1)),)
    ep = torch.export.export(model, example)
    save_program(out, ep, ProgramInfo(kind="module", input_names=["x"], output_names=["y"]), example)
    return out


def write_meta_checkpoint(hf: Path, dest: Path) -> Path:
    """The HF checkpoint in Meta layout: consolidated.00.pth + params.json + tokenizer."""
    import torch
    from safetensors.torch import load_file

    cfg = json.loads((hf / "config.json").read_text())
    sd = load_file(str(hf / "model.safetensors"))
    model_sd = {}
    names = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj.weight": "attention.wq.weight", "self_attn.k_proj.weight": "attention.wk.weight",
                 "self_attn.v_proj.weight": "attention.wv.weight", "self_attn.o_proj.weight": "attention.wo.weight",
                 "mlp.gate_proj.weight": "feed_forward.w1.weight", "mlp.down_proj.weight": "feed_forward.w2.weight",
                 "mlp.up_proj.weight": "feed_forward.w3.weight", "input_layernorm.weight": "attention_norm.weight",
                 "post_attention_layernorm.weight": "ffn_norm.weight"}
    for key, t in sd.items():
        if key in names:
            model_sd[names[key]] = t
            continue
        _, _, layer, rest = key.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            t = _unpermute(t, cfg["num_attention_heads"])
        elif rest == "self_attn.k_proj.weight":
            t = _unpermute(t, cfg["num_key_value_heads"])
        model_sd[f"layers.{layer}.{per_layer[rest]}"] = t.contiguous()
    dest.mkdir(parents=True)
    torch.save(model_sd, dest / "consolidated.00.pth")
    # hidden = multiple_of * ceil(ffn_dim_multiplier * int(8 * dim / 3) / multiple_of) = 128 for dim 64
    params = {"dim": cfg["hidden_size"], "n_layers": cfg["num_hidden_layers"], "n_heads": cfg["num_attention_heads"],
              "n_kv_heads": cfg["num_key_value_heads"], "vocab_size": cfg["vocab_size"], "norm_eps": cfg["rms_norm_eps"],
              "rope_theta": TINY["rope_theta"], "ffn_dim_multiplier": 0.75, "multiple_of": 32}
    (dest / "params.json").write_text(json.dumps(params))
    shutil.copyfile(hf / "tokenizer.json", dest / "tokenizer.json")
    shutil.copyfile(hf / "generation_config.json", dest / "generation_config.json")  # names the stop tokens
    (dest / "checkpoint.json").write_text(json.dumps({"format": "meta", "family": "llama3_2", "synthetic": True}))
    return dest
