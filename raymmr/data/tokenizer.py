"""A subword (BPE) tokenizer trained on the shard texts, saved as ``tokenizer.json`` beside them.

A randomly initialised text tower needs a vocabulary that fits its corpus: a general BERT
vocabulary splits "pneumothorax" into five pieces and wastes most of its 30k rows. The texts
include the *perturbed* variants (synonym / abbreviation swaps of ``raymmr.perturb``), so that
"lt" or "CXR" seen only under perturbation are real tokens and not all ``[UNK]``.

Special tokens are fixed: ``[PAD]`` = 0, ``[UNK]`` = 1, ``[CLS]`` = 2, ``[SEP]`` = 3,
``[MASK]`` = 4; every encoded text is ``[CLS] ... [SEP]``. A pretrained text tower
(``model.text_pretrained``) brings its own tokenizer (``tokenizer_source``): its rows of the
token embedding table belong to its ids. CLIP's tokenizer has no mask token; ``load_tokenizer``
adds one (``ADDED_MASK``, the next id) and the tower grows one row for it, its trained rows kept.

Training is deterministic: the same texts give the same ``tokenizer.json`` byte for byte in any
process. (``tokenizers``' WordPiece trainer is not: it numbers its ``##`` continuation pieces in
hash-map order, which breaks ties between equally frequent merges differently in each process —
huggingface/tokenizers#1794 — so two SynthRad sets from one config got different vocabularies and
the demo's VQA accuracy moved by 3 points between them.) BPE without a continuation prefix has
only its sorted alphabet as initial pieces; words are split on whitespace and punctuation first.
"""

from __future__ import annotations

import os
import random
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_VERSION = 2  # 1: WordPiece (not reproducible), 2: deterministic BPE
ADDED_MASK = "<|mask|>"  # the mask token given to a pretrained tokenizer that has none (CLIP)


def tokenizer_source(cfg, data: str) -> str:
    """Where a run's tokenizer comes from: ``data.tokenizer`` when set, else the pretrained text
    tower's own (``model.text_pretrained``: its embedding rows are indexed by that tokenizer's ids),
    else the one saved with the shards."""
    if cfg.data.tokenizer:
        return cfg.data.tokenizer
    if cfg.model.text_pretrained:
        return cfg.model.text_pretrained
    from raymmr.data.shards import shard_tokenizer

    return shard_tokenizer(data)


def exportable_tokenizer(cfg, data: str, loaded=None):
    """The run's tokenizer (``tokenizer_source``) as an export takes it (``model.export.save_export``):
    the local tokenizer.json of a bare one (copied as it is), else the loaded Hugging Face
    tokenizer (saved with its special-token config): ``loaded`` when the caller has it already
    (``train.setup.new_model`` returns it), else loaded here."""
    from raymmr import storage

    source = storage.local_source(str(tokenizer_source(cfg, data)), "tokenizers")
    bare = bare_tokenizer_file(source)
    if bare is not None:
        return str(bare)
    return loaded if loaded is not None else load_tokenizer(source)


def bare_tokenizer_file(path: str | os.PathLike) -> Path | None:
    """The tokenizer.json of a bare tokenizer (the file itself, or a folder holding one without a
    Hugging Face ``tokenizer_config.json``); None for anything else (a Hugging Face tokenizer's
    folder or name)."""
    path = Path(path)
    if path.is_dir() and (path / TOKENIZER_FILE).is_file() and not (path / "tokenizer_config.json").exists():
        path = path / TOKENIZER_FILE
    return path if path.is_file() else None


def perturbed_variants(texts: list[str], *, seed: int = 0, max_texts: int = 20000) -> list[str]:
    """Strongly perturbed copies of (a sample of) ``texts`` plus the whole synonym table."""
    from raymmr.perturb import TEXT_OPS, perturb_text, synonym_table  # lazy: keeps imports cheap

    rng = random.Random(seed)
    chosen = texts if len(texts) <= max_texts else rng.sample(texts, max_texts)
    out = [perturb_text(t, "strong", ["synonym"], rng) for t in chosen]
    out += [perturb_text(t, "strong", list(TEXT_OPS), rng) for t in chosen[: max_texts // 4]]
    for term, alternatives in synonym_table().items():
        out.append(" ".join([term, *alternatives]))
    return out


def train_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 8192, *, min_frequency: int = 1,
    add_perturbed: bool = True, seed: int = 0,
) -> Path:
    """Train a lower-casing BPE tokenizer on ``texts`` (deterministic: see the module's note);
    write ``out_dir/tokenizer.json``.

    ``add_perturbed`` adds ``perturbed_variants(texts)`` so abbreviations get their own tokens.
    Returns the path of the written file.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer: no non-empty text to train on (are the shards empty?)")
    corpus = texts + (perturbed_variants(texts, seed=seed) if add_perturbed else [])
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # No continuing_subword_prefix / end_of_word_suffix: either adds pieces numbered in hash order.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    if [ids[t] for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):  # the contract's ids
        raise RuntimeError(f"train_tokenizer: special tokens got ids {ids}, expected 0..4 in order")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOKENIZER_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return path


def load_tokenizer(name_or_path: str | os.PathLike):
    """A ``transformers.PreTrainedTokenizerFast`` from a shard dir, a tokenizer.json or an HF name.

    Local files get the special tokens set explicitly (a bare tokenizer.json does not carry
    which token is pad/mask); an HF name or directory with its own config loads as published.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from raymmr import storage

    name_or_path = storage.local_source(str(name_or_path), "tokenizers")  # a URL: its copy in the cache
    path = bare_tokenizer_file(name_or_path)
    if path is not None:
        return PreTrainedTokenizerFast(
            tokenizer_file=str(path), pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"load_tokenizer: {name_or_path!r} is neither a directory holding {TOKENIZER_FILE}, a tokenizer.json "
            f"file, nor a loadable Hugging Face tokenizer (no network here: use a local path; with "
            f"model.text_pretrained, set data.tokenizer to where its tokenizer is). Cause: {e}"
        ) from None
    if tokenizer.mask_token is None:  # CLIP: masked-token reconstruction needs one
        tokenizer.add_special_tokens({"mask_token": ADDED_MASK})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def encode_texts(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise a batch: ids, mask = int64 [B, max_len] each, padded with the pad id, truncated.

    Calls the Rust backend's batch encoder directly (padding/truncation set on a private copy)
    and encodes each distinct text once: a loader batch repeats texts (clean, strong and light
    views, template questions), so this roughly halves the tokenisation time.
    """
    unique = list(dict.fromkeys(texts))
    encodings = _backend_for(tokenizer, max_len).encode_batch(unique)
    ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(unique), max_len)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(unique), max_len)
    if len(unique) != len(texts):
        row = {t: i for i, t in enumerate(unique)}
        index = np.fromiter((row[t] for t in texts), dtype=np.int64, count=len(texts))
        ids, mask = ids[index], mask[index]
    return torch.from_numpy(ids), torch.from_numpy(mask)


# tokenizer -> {max_len: backend copy}; weak so a dropped tokenizer frees its copies
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _backend_for(tokenizer, max_len: int):
    """A copy of the Rust tokenizer padded/truncated to ``max_len`` (cached per tokenizer and length).

    A copy, because enabling padding on the caller's tokenizer would change its behaviour
    everywhere else it is used.
    """
    per_length = _BACKENDS.setdefault(tokenizer, {})
    backend = per_length.get(max_len)
    if backend is None:
        from tokenizers import Tokenizer

        src = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") else tokenizer
        backend = Tokenizer.from_str(src.to_str())
        pad_id = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
        pad_token = getattr(tokenizer, "pad_token", None) or "[PAD]"
        backend.enable_truncation(max_length=max_len)
        backend.enable_padding(length=max_len, pad_id=pad_id, pad_token=pad_token)
        per_length[max_len] = backend
    return backend
