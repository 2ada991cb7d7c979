"""Small, deterministic tokenizers for synthetic checkpoints and GGUF imports.

:func:`build_bpe_tokenizer` trains a byte-level BPE ``tokenizer.json`` from the
packaged corpus (``modelbuild/data/tokenizer_corpus.txt``) with the
``tokenizers`` library. The result loads in ``transformers``, in
``pytorch_tokenizers`` (the ExecuTorch LLM runner's tokenizer library) and
round-trips any text, because every byte is in the base alphabet.

:func:`tokenizer_json_from_vocab` does the reverse job for GGUF files: it
rebuilds a ``tokenizer.json`` from a BPE vocabulary and merge list.

Example::

    data = build_bpe_tokenizer(vocab_size=512)
    Path("tokenizer.json").write_text(data)
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = [
    "SPECIAL_TOKENS",
    "BOS",
    "EOS",
    "EOT",
    "build_bpe_tokenizer",
    "tokenizer_json_from_vocab",
    "corpus_text",
    "tokenizer_config",
]

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
#: Llama 3 style special tokens; they take ids 0..4 in the synthetic tokenizer.
SPECIAL_TOKENS = (BOS, EOS, EOT, "<|start_header_id|>", "<|end_header_id|>")


def corpus_text() -> str:
    """The packaged public-domain training corpus."""
    return resources.files("modelbuild").joinpath("data/tokenizer_corpus.txt").read_text(encoding="utf-8")


def build_bpe_tokenizer(
    vocab_size: int = 512,
    specials: dict[str, int] | None = None,
    bos: str | None = BOS,
) -> str:
    """Train a byte-level BPE tokenizer on the corpus; return tokenizer.json text.

    ``specials`` maps special tokens to ids. Ids ``0..k-1`` are trained in
    front of the vocabulary; ids at or past the trained vocabulary (e.g.
    Llama 3's 128000+) are added as out-of-vocabulary added tokens, the way
    large-vocab tokenizers place them. ``vocab_size`` counts the trained
    tokens plus the leading specials. ``bos`` (if given) is prepended by the
    post-processor, as Llama 3's tokenizer does, so the ExecuTorch runner's
    ``encode(text, bos=1)`` yields it.

    Deterministic: the same arguments give the same bytes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if specials is None:
        specials = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    ordered = sorted(specials.items(), key=lambda kv: kv[1])
    leading = [tok for tok, i in ordered if i < vocab_size]
    if [specials[t] for t in leading] != list(range(len(leading))):
        raise ValueError("special token ids below vocab_size must be 0..k-1")
    tok = Tokenizer(models.BPE())
    # Byte-level with the GPT-2 regex: the pre-tokenizer and decoder the
    # ExecuTorch C++ HF tokenizer implements.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=leading,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in corpus_text().splitlines() if line.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    data = json.loads(tok.to_str())
    data["added_tokens"] = [_added(t, i) for t, i in ordered]
    if bos is not None:
        data["post_processor"] = _bos_template(bos, specials[bos])
    return _canonical(json.dumps(data))


def _added(content: str, index: int) -> dict:
    return {
        "id": index,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _bos_template(bos: str, bos_id: int) -> dict:
    special = {"SpecialToken": {"id": bos, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [special, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            special,
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def tokenizer_json_from_vocab(
    tokens: list[str], merges: list[str], special_ids: list[int], bos_id: int | None = None
) -> str:
    """Build a byte-level BPE tokenizer.json from a vocabulary and merges.

    ``tokens`` are in id order (byte-level encoded, as GPT-2 style tokenizers
    and GGUF "gpt2" tokenizers store them); ``merges`` are ``"a b"`` strings;
    ``special_ids`` become added (special) tokens; ``bos_id`` (if given) is
    prepended by the post-processor.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    data["added_tokens"] = [_added(tokens[i], i) for i in sorted(special_ids)]
    if bos_id is not None:
        data["post_processor"] = _bos_template(tokens[bos_id], bos_id)
    return _canonical(json.dumps(data))


def _canonical(text: str) -> str:
    # Sorted keys would reorder the vocab map, which the format tolerates
    # (it is a map); the merges list keeps its order, which is what matters.
    return json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False, indent=None) + "\n"


def tokenizer_config(bos: str = BOS, eos: str = EOS) -> dict:
    """A minimal tokenizer_config.json naming the BOS and EOS tokens."""
    return {
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
