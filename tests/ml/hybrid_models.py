"""Tiny transformers models of the hybrid families (phi_4_mini, lfm2, qwen3_5) for the ml tests.

One definition of their tiny configs and seeded "sharp" weights, used by the
HF-path tests (test_families_b.py) and the GGUF-path tests
(test_gguf_hybrid.py), so both check conversions of the same models.
Importing this module imports torch and transformers: its users carry the
``ml`` marker.
"""

from __future__ import annotations

import torch
import transformers

CAUSAL_LM = {
    "phi_4_mini": transformers.Phi3ForCausalLM,
    "lfm2": transformers.Lfm2ForCausalLM,
    "qwen3_5": transformers.Qwen3_5ForCausalLM,
}


def tiny_config(family: str):
    """phi_4_mini untied with LongRoPE, lfm2 tied (as the released LFM2s: ExecuTorch's
    lfm_2_to_meta leaves an lm_head.weight unmapped), qwen3_5 untied with 2 key / 4 value heads."""
    if family == "phi_4_mini":
        rope = {"rope_type": "longrope", "short_factor": [1 + 0.1 * i for i in range(6)],
                "long_factor": [2 + 0.5 * i for i in range(6)]}
        return transformers.Phi3Config(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, partial_rotary_factor=0.75, max_position_embeddings=256,
            original_max_position_embeddings=64, rope_scaling=rope, tie_word_embeddings=False,
            pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )
    if family == "lfm2":
        return transformers.Lfm2Config(
            hidden_size=64, intermediate_size=192, block_multiple_of=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=512, layer_types=["conv", "full_attention"],
            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        )
    return transformers.Qwen3_5TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=512, linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False,
        layer_types=["linear_attention", "full_attention"], full_attention_interval=2, bos_token_id=1, eos_token_id=2,
    )


def sharp_model(family: str):
    """The tiny model with seeded random weights large enough for sharp attention (norms around 1)."""
    torch.manual_seed(0)
    model = CAUSAL_LM[family](tiny_config(family)).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in model.named_parameters():
            scale, offset = (0.3, 1.0) if p.dim() == 1 else (0.2, 0.0)
            p.copy_(offset + scale * torch.randn(p.shape, generator=gen))
    return model
