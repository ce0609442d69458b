"""The official SeViLA checkpoint (`sevila_pretrained.pth`, LAVIS `torch.save({"model": state_dict, ...})`) and
LAVIS BLIP-2 checkpoints -> a SeViLA model. LAVIS/BERT names are mapped onto HF's Blip2QFormerModel names here (no
LAVIS import), following transformers' own BLIP-2 conversion (`convert_blip_2_original_to_pytorch.py`:
`Qformer.bert` -> `qformer`, `attention.self` -> `attention.attention`, `embeddings.LayerNorm` -> `layernorm`,
EVA's `q_bias`/`v_bias` -> one `qkv.bias` = [q, 0, v]). Unsafe pickles are refused (`torch.load(weights_only=True)`).
"""
from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from sevila.weights.apply import BRIDGES, Entry, KeyPlan, TensorSource, apply_plan, state_dict_of
from sevila.weights.checkpoint_dir import CheckpointError, CheckpointKind, WeightsReport, brief_list, torch_load


class LavisLayout(str, enum.Enum):
    """What the un-suffixed LAVIS keys (`Qformer.*`, `query_tokens`, `t5_proj.*`, `ln_vision.*`) mean.

    SEVILA: the official SeViLA model, where they are the Answerer and the `_loc`-suffixed keys the Localizer.
    BLIP2: a plain LAVIS BLIP-2 checkpoint, whose single Q-Former initialises BOTH modules (as the official code's
    `load_qformer_loc` does); `_loc` keys are then refused.
    """

    SEVILA = "sevila"
    BLIP2 = "blip2"



_QFORMER_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"bert\.embeddings\.LayerNorm\.(weight|bias)", "layernorm.\\1"),
    (r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)",
     "encoder.layer.\\1.\\2.attention.\\3.\\4"),
    (r"bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)",
     "encoder.layer.\\1.\\2.output.\\3.\\4"),
    (r"bert\.encoder\.layer\.(\d+)\.(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)",
     "encoder.layer.\\1.\\2.\\3.\\4"),
))
#: Parts of LAVIS's BERT Q-Former that BLIP-2-T5 sets to None (sevila.py: `Qformer.cls = None`, word/position
#: embeddings None, each layer's text `intermediate`/`output` None) and the `position_ids` buffer they leave behind.
_QFORMER_UNUSED = re.compile(
    r"cls\..+|bert\.pooler\..+|bert\.embeddings\.(position_ids|word_embeddings\..+|position_embeddings\..+)"
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)")

#: EVA ViT-g (LAVIS eva_vit.py) -> HF Blip2VisionModel, as transformers' BLIP-2 conversion script renames it.
_EVA_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), t) for p, t in (
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", "embeddings.patch_embedding.\\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", "encoder.layers.\\1.layer_norm1.\\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", "encoder.layers.\\1.layer_norm2.\\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", "encoder.layers.\\1.self_attn.qkv.weight"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", "encoder.layers.\\1.self_attn.projection.\\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", "encoder.layers.\\1.mlp.\\2.\\3"),
))
_EVA_QV_BIAS = re.compile(r"blocks\.(\d+)\.attn\.(q_bias|v_bias)")
#: EVA's final norm / head are not part of BLIP-2's visual path (LAVIS returns the block output, then ln_vision).
_EVA_UNUSED = re.compile(r"(norm|fc_norm|head)\.(weight|bias)")
_BLOCK = re.compile(r"blocks\.(\d+)\.")

#: Module-level LAVIS names -> (bridge part, our sub-name); the `_loc` ones are the Localizer's.
_LAVIS_BRIDGE: dict[str, tuple[str, str]] = {
    "query_tokens": ("answerer", "query_tokens"),
    "query_tokens_loc": ("localizer", "query_tokens"),
}
_LAVIS_PREFIX: tuple[tuple[str, str, str], ...] = (  # (LAVIS prefix, bridge, our sub-prefix); longest first
    ("Qformer_loc.", "localizer", "qformer."),
    ("Qformer.", "answerer", "qformer."),
    ("t5_proj_loc.", "localizer", "proj."),
    ("t5_proj.", "answerer", "proj."),
    ("ln_vision_loc.", "localizer", "ln_vision."),
    ("ln_vision.", "answerer", "ln_vision."),
)


def lavis_plan(keys: Iterable[str], entry: Callable[[str], Entry], layout: LavisLayout = LavisLayout.SEVILA,
               n_vision_layers: int | None = None) -> KeyPlan:
    """LAVIS (official SeViLA / BLIP-2) names -> ours. EVA blocks past `n_vision_layers` are dropped (LAVIS builds
    ViT-g with 39 of EVA's 40 blocks and loads non-strictly)."""
    layout = LavisLayout(layout)
    keys = list(keys)
    plan = KeyPlan()
    qv: dict[str, dict[str, str]] = {}

    def bridges(default: str) -> tuple[str, ...]:
        if layout is LavisLayout.BLIP2:
            return BRIDGES  # a BLIP-2 checkpoint's single bridge initialises both modules
        return (default,)

    loc_keys = [k for k in keys if k.startswith(("Qformer_loc.", "t5_proj_loc.", "ln_vision_loc.")) or
                k == "query_tokens_loc"]
    if layout is LavisLayout.BLIP2 and loc_keys:
        raise CheckpointError(f"layout=blip2 but the checkpoint has Localizer keys ({brief_list(loc_keys, 3)}): it is a "
                              "SeViLA checkpoint, load it with layout=sevila")
    for key in keys:
        if key in _LAVIS_BRIDGE:
            part, sub = _LAVIS_BRIDGE[key]
            for b in bridges(part):
                plan.add(f"{b}.{sub}", entry(key))
            continue
        for prefix, part, sub in _LAVIS_PREFIX:
            if key.startswith(prefix):
                rest = key[len(prefix):]
                if prefix.startswith("Qformer"):
                    name = _rename(rest, _QFORMER_RULES)
                    if name is None:
                        (plan.dropped if _QFORMER_UNUSED.fullmatch(rest) else plan.unexpected).append(key)
                        break
                else:
                    name = rest
                for b in bridges(part):
                    plan.add(f"{b}.{sub}{name}", entry(key))
                break
        else:
            if key.startswith("visual_encoder."):
                rest = key[len("visual_encoder."):]
                block = _BLOCK.match(rest)
                if block and n_vision_layers is not None and int(block.group(1)) >= n_vision_layers:
                    plan.dropped.append(key)
                elif (m := _EVA_QV_BIAS.fullmatch(rest)) is not None:
                    qv.setdefault(m.group(1), {})[m.group(2)] = key
                elif (name := _rename(rest, _EVA_RULES)) is not None:
                    plan.add(f"vision.{name}", entry(key))
                elif _EVA_UNUSED.fullmatch(rest):
                    plan.dropped.append(key)
                else:
                    plan.unexpected.append(key)
            elif key.startswith("t5_model."):
                plan.add("t5." + key[len("t5_model."):], entry(key))
            else:
                plan.unexpected.append(key)
    for layer, pair in qv.items():
        if set(pair) != {"q_bias", "v_bias"}:
            plan.unexpected += list(pair.values())  # half a bias cannot be placed
            continue
        q, v = entry(pair["q_bias"]), entry(pair["v_bias"])
        # EVA adds no key bias: qkv bias = [q_bias, 0, v_bias] (LAVIS eva_vit.Attention; HF conversion read_in_q_v_bias)
        plan.add(f"vision.encoder.layers.{layer}.self_attn.qkv.bias", Entry(
            f"{pair['q_bias']} + {pair['v_bias']}",
            lambda q=q, v=v: torch.cat([q.get(), torch.zeros_like(q.get()), v.get()]),
            lambda q=q, v=v: (q.shape()[0] + q.shape()[0] + v.shape()[0],) if len(q.shape()) == len(v.shape()) == 1
            else (-1,)))
    return plan


def _rename(name: str, rules: Sequence[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in rules:
        m = pattern.fullmatch(name)
        if m is not None:
            return m.expand(target)
    return None


def load_lavis_checkpoint(model: nn.Module, path: str | Path, layout: LavisLayout = LavisLayout.SEVILA, *,
                          strict: bool = True) -> WeightsReport:
    """Load an official SeViLA `.pth` (or a LAVIS BLIP-2 one with layout=BLIP2) into `model`; parts the file does
    not hold (e.g. a Localizer-only checkpoint leaves the Answerer, ViT and T5) are left as they are, and reported."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    state = state_dict_of(torch_load(path, "checkpoint", mmap=True), path)
    with TensorSource.from_state(state, path) as src:
        n_layers = model.vision.config.num_hidden_layers if hasattr(model, "vision") else None
        plan = lavis_plan(src.keys(), src.entry, layout, n_layers)
        return apply_plan(model, plan, str(path), CheckpointKind.LAVIS, strict=strict)

