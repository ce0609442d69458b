"""A tiny BLIP-2 Flan-T5 saved exactly as a user's local copy of Salesforce/blip2-flan-t5-xl is: a transformers
directory written by `Blip2ForConditionalGeneration.save_pretrained` (config.json + model.safetensors) with a T5
tokenizer saved beside it. Random weights, nothing downloaded: the tokenizer is a sentencepiece model trained
offline on the miniature's own texts (sevila.model.tokenizer.build_tiny_tokenizer), the model is built from a config.

The real path reads it through sevila.weights.transformers_blip2 like any BLIP-2 directory; nothing there knows it is tiny."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

from sevila.model.tokenizer import build_tiny_tokenizer

DIR_NAME = "blip2-flan-t5-tiny"
VOCAB = 512


def tiny_blip2_config(vocab_size: int) -> Blip2Config:
    """BLIP-2's structure at toy width: ViT (2 layers, 32 px, 8 px patches), Q-Former (2 layers, cross-attention
    every 2nd, 8 query tokens), Flan-T5 (gated-GELU, 2+2 layers, unscaled decoder output as Flan-T5 has).

    The ViT is drawn at std 0.02: transformers' Blip2VisionConfig defaults to initializer_range=1e-10 (its ViT is
    always loaded pre-trained), which left every patch feature ~1e-10, zero once cached in fp16, and the Q-Former's
    LayerNorm (eps 1e-12) over an all-zero input gave an infinite gradient at the first step."""
    text = T5Config(vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1)
    return Blip2Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           patch_size=8, image_size=32, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
                           initializer_range=0.02),
        qformer_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            cross_attention_frequency=2, hidden_act="gelu", layer_norm_eps=1e-12),
        text_config=text.to_dict(), num_query_tokens=8)


def save_tiny_blip2(out: Path, texts: Iterable[str], seed: int = 0) -> Path:
    """`out` = a BLIP-2 directory with random weights (seeded) and a tokenizer trained on `texts` plus every prompt
    template. Written beside `out` and renamed into place, so a crash leaves no half directory."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tok = build_tiny_tokenizer(texts, work / "tokenizer", vocab_size=VOCAB)
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(tiny_blip2_config(len(tok)))
        final = work / "blip2"
        model.save_pretrained(str(final))
        tok.save_pretrained(str(final))
        if out.exists():
            shutil.rmtree(out)
        os.replace(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
