"""T5 tokenizers: the real one from a local checkpoint directory, and a tiny one trained offline for the
synthetic world; plus the token-id look-ups and prompt tokenisation the model relies on.

Nothing here downloads: `load_tokenizer` reads a local directory only, and `build_tiny_tokenizer` trains a
sentencepiece unigram model (T5's tokenizer family) in memory on texts it is given.
"""
from __future__ import annotations

import io
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from sevila.model import prompts

#: Words the model reads scores off: each must be ONE sentencepiece piece `▁word` (docs/design.md §2, Scores).
REQUIRED_SINGLE_TOKENS: tuple[str, ...] = (prompts.YES, prompts.NO, "Option", "Frame", *prompts.OPTION_LETTERS)

#: The files a T5 tokenizer's vocabulary is read from (fast or sentencepiece); tokenizer_config.json alone is not one.
VOCABULARY_FILES = ("tokenizer.json", "spiece.model")
_SPACE = "\u2581"  # sentencepiece's word-start marker
_TEMPLATE_REPEATS = 50
_WORD = re.compile(r"[A-Za-z0-9]+")  # a whole word, punctuation excluded
_MIXED = re.compile(r"[A-Za-z0-9][^A-Za-z0-9]|[^A-Za-z0-9][A-Za-z0-9]")  # letters next to punctuation
_DISABLED = -1e4  # a piece score no segmentation picks while alternatives exist


def load_tokenizer(path: str | Path):
    """The T5 tokenizer saved in checkpoint directory `path` (transformers format), read offline."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    if not any((path / name).is_file() for name in VOCABULARY_FILES):
        raise FileNotFoundError(
            f"{path} holds no tokenizer: a T5 tokenizer needs {' or '.join(VOCABULARY_FILES)} (its vocabulary), "
            f"found neither (save one there with tokenizer.save_pretrained({str(path)!r}))")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token_id is None or tok.eos_token_id is None:
        raise ValueError(f"tokenizer in {path} lacks a pad or eos token; a T5 tokenizer has both")
    return tok


def build_tiny_tokenizer(
    texts: Iterable[str],
    out_dir: str | Path,
    vocab_size: int = 512,
    *,
    overwrite: bool = False,
):
    """Train a small T5-style (sentencepiece unigram) tokenizer on `texts` plus every prompt template, save it
    to `out_dir` as a transformers T5 tokenizer directory (loadable by `load_tokenizer`) and return it.

    Ids follow T5: <pad>=0 (also the decoder start), </s>=1, <unk>=2; no sentinel ids. After training, frequent
    whole words of the corpus are added as pieces (up to `vocab_size` pieces in all) so prompts stay short, and
    the words the model scores (`REQUIRED_SINGLE_TOKENS`) are forced to be single `▁word` pieces by giving them
    the best piece score; `check_single_tokens` then verifies that through the saved tokenizer itself.
    `vocab_size` is an upper bound: a small corpus yields fewer pieces.
    The directory appears atomically (written beside `out_dir`, then renamed).
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from transformers import T5Tokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True to replace it)")
    # The templates occur in every prompt, so they are weighted like it: repeated, they become whole pieces.
    corpus = [t for t in texts if t and t.strip()] + prompts.template_texts() * _TEMPLATE_REPEATS
    if vocab_size < 32:
        raise ValueError(f"vocab_size {vocab_size} is too small for a tokenizer (need >= 32)")

    # 1. train a unigram model in memory (T5 conventions for the special ids; one thread = reproducible)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=proto,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    model = sp_pb2.ModelProto()
    model.ParseFromString(proto.getvalue())

    normal = sp_pb2.ModelProto.SentencePiece.NORMAL
    by_piece = {p.piece: p for p in model.pieces}

    # 2. add frequent whole words as pieces. Unigram training seeds its pieces from repeated substrings, and on a
    #    small templated corpus that yields ~100 pieces and 100-token prompts (the 77-token limit would cut every
    #    prompt). A word piece scored by its log frequency wins the Viterbi segmentation over its sub-pieces.
    #    Words are counted WITHOUT attached punctuation, and pieces mixing letters with punctuation are disabled:
    #    like T5's own vocabulary, "red." must read as "▁red" + "." so that an option ("Option B: red.") and the
    #    frame's content ("a red circle") share the token the model has to match (with "▁red." a tiny T5 must first
    #    learn that two unrelated ids mean the same word, and in practice never learns the matching).
    for p in model.pieces:
        if p.type == normal and _MIXED.search(p.piece.lstrip(_SPACE)):
            p.score = _DISABLED
    counts = Counter(w for text in corpus for w in _WORD.findall(text))
    n_words = sum(counts.values())
    budget = vocab_size - len(model.pieces) - sum(_SPACE + w not in by_piece for w in REQUIRED_SINGLE_TOKENS)
    frequent = sorted((w for w, c in counts.items() if c >= 2 and _SPACE + w not in by_piece),
                      key=lambda w: (-counts[w], w))
    for word in frequent[: max(budget, 0)]:
        piece = model.pieces.add()
        piece.piece, piece.type, piece.score = _SPACE + word, normal, math.log(counts[word] / n_words)
        by_piece[piece.piece] = piece

    # 3. make every required word one piece: a whole-word piece with the best score always wins
    best = max(p.score for p in model.pieces if p.type == normal and p.score > _DISABLED)
    for word in REQUIRED_SINGLE_TOKENS:
        piece = by_piece.get(_SPACE + word)
        if piece is None:
            piece = model.pieces.add()
            piece.piece, piece.type = _SPACE + word, normal
        piece.score = best

    # 4. convert to a transformers T5 tokenizer and save it atomically
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        spm_dir = work / "spm"
        spm_dir.mkdir()
        (spm_dir / "spiece.model").write_bytes(model.SerializeToString())
        tok = T5Tokenizer.from_pretrained(str(spm_dir), extra_ids=0, local_files_only=True)
        final = work / "tokenizer"
        tok.save_pretrained(str(final))
        tok = load_tokenizer(final)
        check_single_tokens(tok, REQUIRED_SINGLE_TOKENS)
        if out_dir.exists():
            old = work / "old"
            os.replace(out_dir, old)
        os.replace(final, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_tokenizer(out_dir)


def single_token_id(tokenizer, word: str) -> int:
    """Id of `word` when the tokenizer writes it as the single piece `▁word`; a clear error otherwise."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    pieces = tokenizer.convert_ids_to_tokens(ids)
    if len(ids) != 1 or pieces[0] != _SPACE + word:
        raise ValueError(
            f"the tokenizer splits {word!r} into {pieces}; the model needs it as the single token "
            f"'{_SPACE}{word}' (scores are read off that token's logit)"
        )
    return int(ids[0])


def check_single_tokens(tokenizer, words: Sequence[str]) -> dict[str, int]:
    return {w: single_token_id(tokenizer, w) for w in words}


@dataclass(frozen=True)
class TokenIds:
    """Token ids the model reads scores off, looked up from the tokenizer (never hard-coded: the official code
    hard-codes Flan-T5's 4273/150/71/272/205/309/262, which breaks on any other vocabulary)."""

    yes: int
    no: int
    option: int
    letters: tuple[int, ...]
    pad: int
    eos: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenIds":
        ids = check_single_tokens(tokenizer, REQUIRED_SINGLE_TOKENS)
        return cls(
            yes=ids[prompts.YES],
            no=ids[prompts.NO],
            option=ids["Option"],
            letters=tuple(ids[letter] for letter in prompts.OPTION_LETTERS),
            pad=int(tokenizer.pad_token_id),
            eos=int(tokenizer.eos_token_id),
        )


@dataclass(frozen=True)
class TokenizedText:
    """Right-padded prompt tokens. `truncated[i]` says prompt i was longer than the limit and was cut."""

    ids: torch.Tensor  # [B, L] long
    mask: torch.Tensor  # [B, L] long, 1 = real token
    truncated: torch.Tensor  # [B] bool


def tokenize_prompts(tokenizer, texts: Sequence[str], max_len: int) -> TokenizedText:
    """Tokenise prompts (ending in </s>) to at most `max_len` tokens, as the official code does with
    `truncation=True, max_length=77`: the text is cut to `max_len - 1` tokens and </s> kept. Unlike the official
    code we also say which prompts were cut (the 77-token limit silently drops trailing options)."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (text + </s>), got {max_len}")
    if len(texts) == 0:
        raise ValueError("no prompts to tokenise")
    eos = tokenizer.eos_token_id
    full = tokenizer(list(texts), add_special_tokens=True).input_ids
    rows, truncated = [], []
    for ids in full:
        truncated.append(len(ids) > max_len)
        rows.append(ids if len(ids) <= max_len else ids[: max_len - 1] + [eos])
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, L]
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, L]
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return TokenizedText(ids=ids, mask=mask, truncated=torch.tensor(truncated, dtype=torch.bool))


def prefix_ids(tokenizer, prefix: str) -> list[int]:
    """Token ids of a frame prefix (`Frame: `), without </s>, as the official code embeds it."""
    ids = tokenizer(prefix, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"prefix {prefix!r} tokenises to nothing")
    return list(ids)
