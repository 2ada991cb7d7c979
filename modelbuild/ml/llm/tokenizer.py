"""Small, deterministic tokenizers for synthetic checkpoints and GGUF imports.

:func:`build_bpe_tokenizer` trains a byte-level BPE ``tokenizer.json`` from the
packaged corpus (``modelbuild/data/tokenizer_corpus.txt``) with the
``tokenizers`` library. The result loads in ``transformers``, in
``pytorch_tokenizers`` (the ExecuTorch LLM runner's tokenizer library) and
round-trips any text, because every byte is in the base alphabet.

:func:`tokenizer_json_from_vocab` does the reverse job for GGUF files: it
rebuilds a ``tokenizer.json`` from a BPE vocabulary and merge list, with the
normalizer and pre-tokenizer that the file's ``tokenizer.ggml.pre`` names
(:data:`PRE_TOKENIZERS`: llama.cpp's names for the splitting rules of
Llama 3 and LFM2, Qwen2, Qwen3.5, GPT-4o's o200k (Phi-4-mini), SmolLM, GPT-2). :func:`sentencepiece_model_from_vocab`
rebuilds a SentencePiece ``tokenizer.model`` from a GGUF ``"llama"``
vocabulary (pieces, scores, types), which the ExecuTorch runner reads as it
reads Llama 2's own file.

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
    "sentencepiece_model_from_vocab",
    "build_sentencepiece_tokenizer",
    "PRE_TOKENIZERS",
    "pre_tokenizer_name",
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
    pre: str | None = None,
) -> str:
    """Train a byte-level BPE tokenizer on the corpus; return tokenizer.json text.

    ``specials`` maps special tokens to ids. Ids ``0..k-1`` are trained in
    front of the vocabulary; ids at or past the trained vocabulary (e.g.
    Llama 3's 128000+) are added as out-of-vocabulary added tokens, the way
    large-vocab tokenizers place them. ``vocab_size`` counts the trained
    tokens plus the leading specials. ``bos`` (if given) is prepended by the
    post-processor, as Llama 3's tokenizer does, so the ExecuTorch runner's
    ``encode(text, bos=1)`` yields it. ``pre`` (a GGUF pre-tokenizer name,
    e.g. ``"llama-bpe"``, ``"qwen2"``) gives the result that family's
    normalizer and splitting rules (training itself always splits GPT-2 style).

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
    if pre is not None:
        data["normalizer"], data["pre_tokenizer"] = PRE_TOKENIZERS[pre]
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


#: The Llama 3 split regex (Hugging Face's tokenizer.json spelling; llama.cpp's "llama-bpe").
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2's: the same, but every digit on its own.
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")
#: Qwen3.5's: Qwen2's with combining marks (\p{M}) kept with the letters (llama.cpp's "qwen35").
_QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: o200k's (GPT-4o; Phi-4-mini's tokenizer.json), llama.cpp's "gpt-4o": case-aware words, / kept with punctuation.
_O200K_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(regex: str, trim_offsets: bool) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": False},
        ],
    }


_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}

#: GGUF ``tokenizer.ggml.pre`` -> (normalizer, pre_tokenizer) of the tokenizer.json the model was converted from.
PRE_TOKENIZERS: dict[str, tuple[dict | None, dict]] = {
    "default": (None, _GPT2),
    "gpt2": (None, _GPT2),
    "llama-bpe": (None, _split_then_bytes(_LLAMA3_REGEX, True)),
    "llama3": (None, _split_then_bytes(_LLAMA3_REGEX, True)),
    "qwen2": ({"type": "NFC"}, _split_then_bytes(_QWEN2_REGEX, False)),
    "qwen35": ({"type": "NFC"}, _split_then_bytes(_QWEN35_REGEX, False)),
    "gpt-4o": (None, _split_then_bytes(_O200K_REGEX, True)),
    # llama.cpp reads LFM2's "lfm2" with Llama 3's splitting rules.
    "lfm2": (None, _split_then_bytes(_LLAMA3_REGEX, True)),
    "smollm": (
        None,
        {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _GPT2]},
    ),
}


#: Names that share another name's rules: recognition answers the other one.
_ALIASES = ("default", "llama3", "lfm2")


def pre_tokenizer_name(tokenizer_json: dict) -> str:
    """The llama.cpp ``tokenizer.ggml.pre`` name of a tokenizer.json's splitting rules ("gpt2" if unknown)."""
    pair = (tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer"))
    for name, (norm, pre) in PRE_TOKENIZERS.items():
        if name not in _ALIASES and _same(pair, (norm, pre)):
            return name
    return "gpt2"


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def tokenizer_json_from_vocab(
    tokens: list[str], merges: list[str], special_ids: list[int], bos_id: int | None = None, pre: str = "gpt2"
) -> str:
    """Build a byte-level BPE tokenizer.json from a vocabulary and merges.

    ``tokens`` are in id order (byte-level encoded, as GPT-2 style tokenizers
    and GGUF "gpt2" tokenizers store them); ``merges`` are ``"a b"`` strings;
    ``special_ids`` become added (special) tokens; ``bos_id`` (if given) is
    prepended by the post-processor; ``pre`` is the GGUF pre-tokenizer name
    (a key of :data:`PRE_TOKENIZERS`; ValueError otherwise: splitting text
    differently from the model's training would change every token id).
    """
    from tokenizers import Tokenizer, decoders, models

    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"tokenizer.ggml.pre '{pre}' is not known (known: {', '.join(sorted(PRE_TOKENIZERS))})")
    normalizer, pre_tokenizer = PRE_TOKENIZERS[pre]
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs))
    tok.decoder = decoders.ByteLevel()
    data = json.loads(tok.to_str())
    data["normalizer"] = normalizer
    data["pre_tokenizer"] = pre_tokenizer
    data["added_tokens"] = [_added(tokens[i], i) for i in sorted(special_ids)]
    if bos_id is not None:
        data["post_processor"] = _bos_template(tokens[bos_id], bos_id)
    return _canonical(json.dumps(data))


#: GGUF token types (llama.cpp took SentencePiece's numbering): NORMAL 1, UNKNOWN 2, CONTROL 3,
#: USER_DEFINED 4, UNUSED 5, BYTE 6.
_SP_TYPES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}


def sentencepiece_model_from_vocab(
    tokens: list[str],
    scores: list[float],
    types: list[int],
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    unk_id: int | None = None,
    add_space_prefix: bool = True,
) -> bytes:
    """A SentencePiece ``tokenizer.model`` (serialized ModelProto) from a GGUF ``"llama"`` vocabulary.

    llama.cpp's converter copies each piece, its score and its type out of
    ``tokenizer.model``; this puts them back in a BPE model with Llama's
    normalizer settings (identity normalization, whitespace escaped to
    U+2581, a dummy prefix unless ``tokenizer.ggml.add_space_prefix`` is
    false, byte fallback when the vocabulary has ``<0xHH>`` pieces).
    Deterministic: the same vocabulary gives the same bytes.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp

    model = sp.ModelProto()
    for text, score, ty in zip(tokens, scores, types):
        piece = model.pieces.add()
        piece.piece = text
        piece.score = float(score)
        piece.type = _SP_TYPES.get(int(ty), 1)
    if unk_id is None:
        unk_id = next((i for i, ty in enumerate(types) if int(ty) == 2), 0)
    spec = model.trainer_spec
    spec.model_type = sp.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = any(int(ty) == 6 for ty in types)
    spec.unk_id = int(unk_id)
    spec.bos_id = -1 if bos_id is None else int(bos_id)
    spec.eos_id = -1 if eos_id is None else int(eos_id)
    spec.pad_id = -1
    spec.unk_piece = tokens[spec.unk_id]
    if bos_id is not None:
        spec.bos_piece = tokens[bos_id]
    if eos_id is not None:
        spec.eos_piece = tokens[eos_id]
    norm = model.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(add_space_prefix)
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return model.SerializeToString(deterministic=True)


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


def build_sentencepiece_tokenizer(vocab_size: int = 512) -> bytes:
    """Train a SentencePiece BPE ``tokenizer.model`` on the corpus, as Llama 2 ships one.

    ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, byte fallback (every text
    encodes), Llama's normalizer settings. One training thread, so the same
    ``vocab_size`` gives the same bytes.
    """
    import io

    import sentencepiece as spm

    lines = [line for line in corpus_text().splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()
