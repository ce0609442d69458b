"""transformers BLIP-2 Flan-T5 directories (`Blip2ForConditionalGeneration.save_pretrained`, e.g. a local copy of
Salesforce/blip2-flan-t5-xl) -> a SeViLA model, read offline only. Key mapping: `vision_model.*` -> the shared
ViT, its `post_layernorm` -> BOTH modules' `ln_vision`, `qformer.*` / `query_tokens` / `language_projection.*` ->
BOTH modules' bridges (the official code starts both Q-Formers from BLIP-2's: `load_qformer_loc`; paper §3.1),
`language_model.*` -> Flan-T5. The sizes come from the directory's config.json (`config_from_blip2`).
"""
from __future__ import annotations

import enum
import json
import re
from pathlib import Path
from typing import Callable, Iterable

from torch import nn
from transformers import Blip2Config

from sevila.model.configuration import SeViLAConfig
from sevila.model.tokenizer import load_tokenizer
from sevila.weights.apply import Entry, KeyPlan, TensorSource, apply_plan, empty_model
from sevila.weights.checkpoint_dir import CheckpointError, CheckpointKind, WeightsReport


class Numerics(str, enum.Enum):
    """Which numbers a model built from an HF BLIP-2 directory computes where LAVIS and transformers differ.

    LAVIS: SeViLA's own (official code): Flan-T5's gated FFN with exact GELU (`t5_config.dense_act_fn = "gelu"`)
    and `ln_vision` as a default nn.LayerNorm (eps 1e-5). Use this for SeViLA checkpoints.
    HF: what transformers' Blip2ForConditionalGeneration computes from the same directory (`gelu_new`, the vision
    config's `layer_norm_eps`), e.g. to reproduce its outputs exactly.
    """

    LAVIS = "lavis"
    HF = "hf"




_ST_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"


def read_blip2_config(hf_dir: str | Path):
    """The Blip2Config of a local directory (config.json), checked to be BLIP-2 with a T5 language model."""
    hf_dir = Path(hf_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{hf_dir}: no config.json (not a transformers model directory)")
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from e
    if raw.get("model_type") not in ("blip-2", "blip_2"):
        raise CheckpointError(f"{cfg_path}: model_type {raw.get('model_type')!r}, expected 'blip-2'")
    if (raw.get("text_config") or {}).get("model_type", "t5") != "t5":
        raise CheckpointError(f"{cfg_path}: the language model is {raw['text_config'].get('model_type')!r}; SeViLA "
                              "is built on Flan-T5 (model_type 't5')")
    return Blip2Config.from_dict(raw)


_VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                "hidden_act", "layer_norm_eps", "qkv_bias", "attention_dropout", "initializer_range")
_QFORMER_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                 "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps", "cross_attention_frequency",
                 "initializer_range", "max_position_embeddings")
_T5_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
            "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
            "layer_norm_epsilon", "feed_forward_proj", "initializer_factor", "pad_token_id", "eos_token_id",
            "decoder_start_token_id")


def config_from_blip2(hf_config, numerics: Numerics = Numerics.LAVIS, max_text_len: int = 77):
    """SeViLAConfig from a Blip2Config: the sizes of the checkpoint, the numerics chosen by `numerics`.

    T5 output scaling: T5 v1.1 / Flan-T5 does not scale the decoder output before lm_head; transformers records that
    as `tie_word_embeddings=False` (v4) or `scale_decoder_outputs=False` (v5), which we carry over either way.
    """
    numerics = Numerics(numerics)
    v, q, t = hf_config.vision_config, hf_config.qformer_config, hf_config.text_config
    vision = {k: getattr(v, k) for k in _VISION_KEYS if getattr(v, k, None) is not None}
    qformer = {k: getattr(q, k) for k in _QFORMER_KEYS if getattr(q, k, None) is not None}
    t5 = {k: getattr(t, k) for k in _T5_KEYS if getattr(t, k, None) is not None}
    scale = getattr(t, "scale_decoder_outputs", None)
    if scale is None:
        scale = bool(getattr(t, "tie_word_embeddings", True))
    t5["tie_word_embeddings"] = bool(scale)  # True -> scaled output (original T5); False -> T5 v1.1 / Flan-T5
    if t5.get("decoder_start_token_id") is None:
        t5["decoder_start_token_id"] = t5.get("pad_token_id", 0)
    if numerics is Numerics.LAVIS:
        act, eps = "gelu", 1e-5  # official sevila.py: t5_config.dense_act_fn = "gelu"; LAVIS LayerNorm default eps
    else:
        act, eps = str(t.dense_act_fn), float(v.layer_norm_eps)
    return SeViLAConfig(vision=vision, qformer=qformer, t5=t5, n_query=int(hf_config.num_query_tokens),
                        max_text_len=max_text_len, image_size=int(v.image_size), ln_vision_eps=eps,
                        t5_dense_act_fn=act)


def blip2_weight_files(hf_dir: str | Path) -> list[Path]:
    """The weight files of an HF directory: safetensors (single or sharded with an index) first, else .bin."""
    hf_dir = Path(hf_dir)
    for index_name, single in ((_ST_INDEX, "model.safetensors"), (_BIN_INDEX, "pytorch_model.bin")):
        if (hf_dir / single).is_file():
            return [hf_dir / single]
        if (hf_dir / index_name).is_file():
            try:
                weight_map = json.loads((hf_dir / index_name).read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{hf_dir / index_name}: not a shard index ({e})") from e
            files = [hf_dir / name for name in dict.fromkeys(weight_map.values())]
            absent = [str(f) for f in files if not f.is_file() or f.resolve().parent != hf_dir.resolve()]
            if absent:
                raise CheckpointError(f"{hf_dir / index_name}: shards missing or outside the directory: {absent}")
            return files
    raise CheckpointError(f"{hf_dir}: no model.safetensors, {_ST_INDEX}, pytorch_model.bin or {_BIN_INDEX}")


_BLIP2_RULES: tuple[tuple[re.Pattern, tuple[str, ...]], ...] = tuple(
    (re.compile(p), t) for p, t in (
        (r"vision_model\.post_layernorm\.(weight|bias)", ("localizer.ln_vision.\\1", "answerer.ln_vision.\\1")),
        (r"vision_model\.(embeddings|encoder)\.(.+)", ("vision.\\1.\\2",)),
        (r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)", ()),  # text FFN
        (r"qformer\.embeddings\..+", ()),  # text embeddings (only Blip2 models that read text through the Q-Former)
        (r"qformer\.(.+)", ("localizer.qformer.\\1", "answerer.qformer.\\1")),
        (r"query_tokens", ("localizer.query_tokens", "answerer.query_tokens")),
        (r"language_projection\.(weight|bias)", ("localizer.proj.\\1", "answerer.proj.\\1")),
        (r"language_model\.(.+)", ("t5.\\1",)),
    ))


def blip2_plan(keys: Iterable[str], entry: Callable[[str], Entry]) -> KeyPlan:
    """HF BLIP-2 names -> ours. An empty target tuple means 'known and unused' (dropped)."""
    plan = KeyPlan()
    for key in keys:
        for pattern, targets in _BLIP2_RULES:
            m = pattern.fullmatch(key)
            if m is None:
                continue
            if not targets:
                plan.dropped.append(key)
            for t in targets:
                plan.add(m.expand(t), entry(key))
            break
        else:
            plan.unexpected.append(key)
    return plan


def load_blip2_weights(model: nn.Module, hf_dir: str | Path, *, strict: bool = True) -> WeightsReport:
    """Copy an HF BLIP-2 directory's weights into `model`: ViT, Flan-T5, and BLIP-2's Q-Former into both bridges."""
    hf_dir = Path(hf_dir)
    read_blip2_config(hf_dir)  # it is a BLIP-2 Flan-T5 directory
    with TensorSource.from_files(blip2_weight_files(hf_dir)) as src:
        plan = blip2_plan(src.keys(), src.entry)
        plan.notes.append("both Q-Formers start from BLIP-2's (vision post_layernorm -> both ln_vision)")
        return apply_plan(model, plan, str(hf_dir), CheckpointKind.HF_BLIP2, strict=strict)


def build_from_blip2_dir(hf_dir: str | Path, *, numerics: Numerics = Numerics.LAVIS, max_text_len: int = 77,
                         with_tokenizer: bool = True) -> tuple[nn.Module, WeightsReport]:
    """A SeViLA whose every part comes from a local BLIP-2 Flan-T5 directory (nothing downloaded), with the
    directory's tokenizer attached (`with_tokenizer`: then a directory without one is refused BEFORE any weight is
    read: a 4B-parameter load takes minutes). Both modules start as BLIP-2 (paper §3.1: the Localizer and the
    Answerer are both initialised from BLIP-2)."""
    hf_dir = Path(hf_dir)
    config = config_from_blip2(read_blip2_config(hf_dir), numerics, max_text_len)
    tokenizer = blip2_dir_tokenizer(hf_dir) if with_tokenizer else None
    model = empty_model(config, tokenizer)
    report = load_blip2_weights(model, hf_dir, strict=True)
    return model, report


def blip2_dir_tokenizer(hf_dir: str | Path, also_looked: str = ""):
    """The T5 tokenizer saved in a BLIP-2 directory; a CheckpointError naming the directory and what is missing
    when there is none (`also_looked`: where else one was looked for, for the message)."""
    hf_dir = Path(hf_dir)
    try:
        return load_tokenizer(hf_dir)
    except (OSError, ValueError) as e:  # FileNotFoundError included; a damaged vocabulary file raises either
        raise CheckpointError(
            f"{hf_dir}: this BLIP-2 directory has no usable tokenizer{also_looked} ({e}). Save the Flan-T5 "
            "tokenizer into it: AutoTokenizer.from_pretrained(<a local copy of google/flan-t5-xl or "
            "Salesforce/blip2-flan-t5-xl>).save_pretrained(DIR)") from None
