"""SeViLA's configuration (transformers style: `configuration_*.py` beside `modeling_*.py`): the sizes of every part,
as plain dicts of transformers' Blip2VisionConfig / Blip2QFormerConfig / T5Config keyword arguments, so a config is
JSON and travels inside a checkpoint. Presets: `sevila_flant5xl` (the paper's sizes) and `sevila_tiny`."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from transformers import Blip2QFormerConfig, Blip2VisionConfig, T5Config


@dataclass(frozen=True)
class SeViLAConfig:
    """Sizes of every part. `vision`/`qformer`/`t5` are keyword arguments of transformers' Blip2VisionConfig,
    Blip2QFormerConfig and T5Config (plain dicts, so the config is JSON and can travel inside a checkpoint)."""

    vision: Mapping[str, Any]
    qformer: Mapping[str, Any]
    t5: Mapping[str, Any]
    n_query: int = 32
    max_text_len: int = 77  # official `max_txt_len`: prompt tokens kept (incl. </s>)
    image_size: int = 224
    ln_vision_eps: float = 1e-5  # LAVIS `ln_vision` is a default nn.LayerNorm
    t5_dense_act_fn: str = "gelu"  # LAVIS sets `t5_config.dense_act_fn = "gelu"` (HF gated-gelu uses gelu_new)

    def __post_init__(self) -> None:
        for name in ("vision", "qformer", "t5"):
            object.__setattr__(self, name, dict(getattr(self, name)))  # own copies: no aliasing
        for name in ("n_query", "max_text_len", "image_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SeViLAConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len must leave room for text and </s>, got {self.max_text_len}")
        if "image_size" in self.vision and self.vision["image_size"] != self.image_size:
            raise ValueError(f"vision.image_size {self.vision['image_size']} != image_size {self.image_size}")
        if "encoder_hidden_size" in self.qformer:
            raise ValueError("qformer.encoder_hidden_size is set from the vision width; do not give it")
        patch = self.vision_config().patch_size
        if self.image_size % patch:
            raise ValueError(f"image_size {self.image_size} is not a multiple of the patch size {patch}")

    def vision_config(self) -> Blip2VisionConfig:
        return Blip2VisionConfig(**{**self.vision, "image_size": self.image_size})

    def qformer_config(self) -> Blip2QFormerConfig:
        # The Q-Former cross-attends to the ViT output (BLIP-2: encoder_width = ViT width).
        return Blip2QFormerConfig(**{**self.qformer, "encoder_hidden_size": self.vision_config().hidden_size})

    def t5_config(self) -> T5Config:
        cfg = T5Config(**self.t5)
        cfg.dense_act_fn = self.t5_dense_act_fn
        return cfg

    @property
    def n_vision_tokens(self) -> int:
        """P: ViT tokens per frame = patches + CLS."""
        return (self.image_size // self.vision_config().patch_size) ** 2 + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SeViLAConfig":
        return cls(**dict(d))


def sevila_flant5xl() -> SeViLAConfig:
    """The real sizes: BLIP-2 ViT-g/14 (EVA-CLIP, last layer dropped: 39 layers) + Q-Former (BERT-base, cross-
    attention every 2nd layer, 32 queries) + Flan-T5-XL (google/flan-t5-xl config.json)."""
    return SeViLAConfig(
        vision=dict(
            hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
            patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
        ),
        qformer=dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
            hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            layer_norm_eps=1e-12, cross_attention_frequency=2, initializer_range=0.02,
        ),
        t5=dict(
            vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
            num_heads=32, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ),
        n_query=32,
        max_text_len=77,
        image_size=224,
    )


def sevila_tiny(vocab_size: int) -> SeViLAConfig:
    """A model of the same structure that trains on a CPU in seconds (synthetic world, tests)."""
    return SeViLAConfig(
        vision=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, initializer_range=0.02,
        ),
        qformer=dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
            layer_norm_eps=1e-12, cross_attention_frequency=2, initializer_range=0.02,
        ),
        t5=dict(
            vocab_size=vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
            dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        ),
        n_query=8,
        max_text_len=77,
        image_size=32,
    )
