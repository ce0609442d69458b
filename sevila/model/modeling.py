"""SeViLA (Yu et al., NeurIPS 2023) in one model file, on transformers' BLIP-2 and T5 parts.

    pixels [B*T, 3, H, W]
      -> frozen ViT (Blip2VisionModel, without its final LayerNorm)      -> features [B*T, P, Dv]  (cacheable)
      -> per module: own LayerNorm -> own Q-Former -> own projection     -> [B*T, n_query, d_model]
      -> frozen Flan-T5 (one model shared by both modules)

- Localizer (paper §3.1): each frame is its own T5 sequence `[Frame: ][queries][localizer prompt]`; the frame's
  score is the logit of `yes` at the first decoder step. The top-k frames, in temporal order, are keyframes.
- Answerer (paper §3.1): the keyframes share one sequence `[Frame 1: ][q1]...[Frame k: ][qk][answerer prompt]`;
  the prediction is the argmax over the option letters' logits at the decoder step after `Option`.
- Only the two bridges (LayerNorm, Q-Former, query tokens, projection) ever train (paper §4.1, ~106M each).

Shape names: B questions, T frames per question, K frames in one Answerer sequence, P = ViT tokens per frame
(patches + CLS), Dv ViT width, Q query tokens, Hq Q-Former width, d T5 width, L sequence length, V vocabulary,
C = 5 option letters (A..E).

Official-code behaviour kept (lavis/models/sevila_models/sevila.py): one ViT pass feeds both modules, each with its
own `ln_vision` (LAVIS LayerNorm, eps 1e-5) on the ViT output; T5's gated FFN uses exact GELU (`dense_act_fn =
"gelu"`); prompt text is cut at 77 tokens; Localizer score = `scores[0][:, yes_id]`; Answerer logits =
`logits[:, 1, answer_ids]`. Changed on purpose: token ids are looked up, not hard-coded; one decoder step instead
of a 30-token generate loop; frozen ViT and T5 are kept in eval mode (LAVIS leaves T5 dropout on while training);
the `Frame i: ` prefixes are not padded to a common length (LAVIS pads them with masked <pad> tokens, which only
matters where two prefixes tokenise to different lengths).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionModel, T5ForConditionalGeneration

from sevila.model import prompts
from sevila.model.configuration import SeViLAConfig
from sevila.model.selection import localizer_topk
from sevila.model.tokenizer import TokenIds, TokenizedText, prefix_ids, tokenize_prompts

# ---------------------------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------------------------


class FlanT5(T5ForConditionalGeneration):
    """T5ForConditionalGeneration with Flan-T5's own `lm_head` (T5 v1.1: not tied to the input embeddings).

    transformers 5 ties `lm_head` to `shared` whenever a T5 is built from a config (it only unties while loading a
    checkpoint that holds both). Flan-T5-XL has a separate 65.8M-parameter lm_head, so we list only the truly
    shared embeddings as tied; the output scaling is already off (`tie_word_embeddings=False` in the config).
    """

    _tied_weights_keys = {
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }


class QFormerBridge(nn.Module):
    """One module's trainable bridge from frozen ViT to frozen T5 (BLIP-2's Q-Former, paper §3.1).

    features [N, P, Dv] -> ln_vision -> Q-Former(queries attend to the frame) -> proj -> [N, Q, d]
    """

    def __init__(self, vision_width: int, qformer_config: Blip2QFormerConfig, n_query: int, d_model: int,
                 ln_eps: float) -> None:
        super().__init__()
        self.ln_vision = nn.LayerNorm(vision_width, eps=ln_eps)
        self.qformer = Blip2QFormerModel(qformer_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, n_query, qformer_config.hidden_size))  # [1, Q, Hq]
        # BLIP-2 (LAVIS init_Qformer) draws the query tokens from N(0, 0.02); zeros would make them identical.
        nn.init.normal_(self.query_tokens, mean=0.0, std=qformer_config.initializer_range)
        self.proj = nn.Linear(qformer_config.hidden_size, d_model)  # official `t5_proj` / `t5_proj_loc`
        self.trainable = True

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.ln_vision(features)  # [N, P, Dv] this module's LayerNorm on the shared pre-LN ViT output
        queries = self.query_tokens.expand(x.shape[0], -1, -1)  # [N, Q, Hq]
        out = self.qformer(query_embeds=queries, encoder_hidden_states=x).last_hidden_state  # [N, Q, Hq]
        return self.proj(out)  # [N, Q, d]

    def set_trainable(self, flag: bool) -> None:
        self.trainable = bool(flag)
        self.requires_grad_(self.trainable)


class Localizer(QFormerBridge):
    """The Localizer (paper §3.1): its bridge (official `Qformer_loc`, `query_tokens_loc`, `t5_proj_loc`,
    `ln_vision_loc`) and how the shared T5 is read for it: a frame's score is the logit of `yes` at the first
    decoder step; it learns the targets `yes` / `no` per frame (paper §3.2-3.3)."""

    @staticmethod
    def read_scores(first_step_logits: torch.Tensor, ids: TokenIds) -> torch.Tensor:
        """logits [N, V] of the first decoder step -> frame scores [N] (official `scores[0][:, yes_id]`)."""
        return first_step_logits[:, ids.yes]

    @staticmethod
    def targets(labels: torch.Tensor) -> list[str]:
        """labels [B, T] bool (True = keyframe) -> B*T target texts, question-major."""
        return [prompts.localizer_target(bool(x)) for x in labels.flatten().tolist()]


class Answerer(QFormerBridge):
    """The Answerer (paper §3.1): its bridge (official `Qformer`, `query_tokens`, `t5_proj`, `ln_vision`) and how
    the shared T5 is read for it: the option letters' logits at the decoder step after `Option`; it learns the
    target `Option X`."""

    @staticmethod
    def read_options(letter_step_logits: torch.Tensor, ids: TokenIds, n_options: torch.Tensor) -> torch.Tensor:
        """logits [N, V] of the step after `Option` -> option logits [N, C]; letters past a question's options get
        -inf, so they never win."""
        letters = torch.tensor(ids.letters, device=letter_step_logits.device)  # [C]
        opt = letter_step_logits[:, letters]  # [N, C]
        missing = torch.arange(len(ids.letters), device=opt.device)[None, :] >= n_options.to(opt.device)[:, None]
        return opt.masked_fill(missing, float("-inf"))  # [N, C]

    @staticmethod
    def targets(answers: Sequence[int], limits: Sequence[int | None]) -> list[str]:
        """answers [B] option index (each below its question's option count) -> B target texts `Option X`."""
        return [prompts.answer_target(a, lim) for a, lim in zip(answers, limits)]


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class EncoderInputs:
    """One batch of T5 encoder inputs. `visual_len` = where the prompt text starts in every row."""

    embeds: torch.Tensor  # [N, L, d]
    mask: torch.Tensor  # [N, L] long
    truncated: torch.Tensor  # [B] bool, per prompt (before any per-frame repetition)
    visual_len: int


@dataclass
class LocalizerOutput:
    scores: torch.Tensor  # [B, T] yes-logit per frame
    truncated: torch.Tensor  # [B] bool
    keyframes: torch.Tensor | None = None  # [B, k] long, temporal order
    keyframe_scores: torch.Tensor | None = None  # [B, k]


@dataclass
class AnswererOutput:
    option_logits: torch.Tensor  # [B, C] (or [B, T, C] per frame); -inf beyond each question's options
    pred: torch.Tensor  # [B] (or [B, T]) long option index
    truncated: torch.Tensor  # [B] bool


@dataclass(frozen=True)
class ParamCounts:
    total: int
    parts: dict[str, int]
    trainable: dict[str, int]  # per module: what trains when that module is trained (its bridge)
    requires_grad: int = 0  # parameters with requires_grad right now

    def to_json(self) -> dict:
        return {"total": self.total, "parts": dict(self.parts), "trainable": dict(self.trainable)}


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------

MODULES = ("localizer", "answerer")
_BRIDGE_PARTS = ("qformer", "query_tokens", "proj", "ln_vision")


class SeViLA(nn.Module):
    """One frozen ViT and one frozen Flan-T5 shared by the Localizer and the Answerer (paper Fig. 2).

    Text-side methods need a tokenizer (`attach_tokenizer`, or pass it here); the model can be built without one
    (e.g. on the meta device to count parameters).
    """

    def __init__(self, config: SeViLAConfig, tokenizer=None) -> None:
        super().__init__()
        self.config = config
        vision_cfg, qformer_cfg, t5_cfg = config.vision_config(), config.qformer_config(), config.t5_config()
        if t5_cfg.decoder_start_token_id is None:
            raise ValueError("t5.decoder_start_token_id must be set (T5 starts decoding from <pad> = 0)")
        self.vision = Blip2VisionModel(vision_cfg)
        # The checkpoint's `post_layernorm` (LAVIS `ln_vision`) lives on as each module's own `ln_vision`; the shared
        # ViT ends before it, so a plain `self.vision(pixels)` also returns the pre-LN features.
        self.vision.post_layernorm = nn.Identity()
        self.t5 = FlanT5(t5_cfg)
        if self.t5.lm_head.weight is self.t5.shared.weight:
            raise RuntimeError("Flan-T5's lm_head must not be tied to its input embeddings")
        bridge_args = (vision_cfg.hidden_size, qformer_cfg, config.n_query, t5_cfg.d_model, config.ln_vision_eps)
        self.localizer = Localizer(*bridge_args)
        self.answerer = Answerer(*bridge_args)
        # Frozen backbone (paper §3: only the Q-Formers train): no grads, and eval mode via `train()` below.
        self.vision.requires_grad_(False)
        self.t5.requires_grad_(False)
        self.tokenizer = None
        self.token_ids: TokenIds | None = None
        if tokenizer is not None:
            self.attach_tokenizer(tokenizer)
        self.eval()  # like transformers' from_pretrained; training code calls .train()

    # ---- bookkeeping -----------------------------------------------------------------------------------------

    def attach_tokenizer(self, tokenizer) -> None:
        """Look up (and check) the token ids the model scores, and keep the tokenizer for prompts."""
        ids = TokenIds.from_tokenizer(tokenizer)
        vocab = self.t5.config.vocab_size
        if len(tokenizer) > vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but T5 has only {vocab} embeddings")
        self.tokenizer, self.token_ids = tokenizer, ids
        self._prefix_cache: dict[int, list[list[int]]] = {}

    def require_tokenizer(self):
        if self.tokenizer is None or self.token_ids is None:
            raise RuntimeError("no tokenizer attached: build SeViLA(config, tokenizer) or call attach_tokenizer()")
        return self.tokenizer, self.token_ids

    def bridge(self, name: str) -> QFormerBridge:
        if name not in MODULES:
            raise ValueError(f"unknown module {name!r}; expected one of {MODULES}")
        return getattr(self, name)

    def set_trainable(self, localizer: bool | None = None, answerer: bool | None = None) -> None:
        """Switch each module's bridge on or off for training; ViT and T5 stay frozen whatever is asked."""
        for name, flag in (("localizer", localizer), ("answerer", answerer)):
            if flag is not None:
                self.bridge(name).set_trainable(flag)
        self.train(self.training)

    def train(self, mode: bool = True) -> "SeViLA":
        """Frozen parts always run in eval mode (no dropout); a frozen bridge too (e.g. the Answerer while it
        makes pseudo-labels for the Localizer, paper §3.2)."""
        super().train(mode)
        self.vision.eval()
        self.t5.eval()
        for name in MODULES:
            bridge = self.bridge(name)
            bridge.train(mode and bridge.trainable)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- vision (frozen, cacheable) --------------------------------------------------------------------------

    @torch.no_grad()
    def encode_frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] (CLIP-normalised) -> ViT features [N, P, Dv] BEFORE the final LayerNorm.

        BLIP-2's `ln_vision` is the HF `post_layernorm`; SeViLA gives each module its own copy of it, so the shared
        ViT output is taken before it and each bridge applies its own (official `ln_vision` / `ln_vision_loc`).
        These features depend only on the frames: a feature cache stores exactly this tensor.
        """
        return self.vision_features(pixels)

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """`encode_frames` with autograd left on: only the synthetic world's backbone bootstrap trains the ViT."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [N, 3, H, W], got {tuple(pixels.shape)}")
        size = self.config.image_size
        if pixels.shape[2:] != (size, size):
            raise ValueError(f"frames must be {size}x{size}, got {pixels.shape[2]}x{pixels.shape[3]}")
        x = self.vision.embeddings(pixels)  # [N, P, Dv] patch embeddings + CLS + positions
        return self.vision.encoder(inputs_embeds=x).last_hidden_state  # [N, P, Dv] no post_layernorm

    def _check_features(self, features: torch.Tensor, what: str) -> None:
        p, dv = self.config.n_vision_tokens, self.vision.config.hidden_size
        if features.dim() != 4 or features.shape[2:] != (p, dv):
            raise ValueError(f"{what}: features must be [B, T, {p}, {dv}] (encode_frames output per frame), "
                             f"got {tuple(features.shape)}")

    # ---- T5 encoder inputs -------------------------------------------------------------------------------------

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.t5.get_input_embeddings()(ids)  # [.., L] -> [.., L, d] (T5 `shared`, = encoder.embed_tokens)

    def frame_prefix_ids(self, k: int) -> list[list[int]]:
        """Token ids of the k frame prefixes of one sequence (`Frame: ` if k == 1, else `Frame i: `)."""
        tok, _ = self.require_tokenizer()
        if k not in self._prefix_cache:
            self._prefix_cache[k] = [prefix_ids(tok, p) for p in prompts.frame_prefixes(k)]
        return self._prefix_cache[k]

    def visual_len(self, k: int) -> int:
        """Length of the visual part of a sequence of k frames: prefixes + k * Q query tokens."""
        return sum(len(p) for p in self.frame_prefix_ids(k)) + k * self.config.n_query

    def tokenize(self, texts: Sequence[str]) -> TokenizedText:
        tok, _ = self.require_tokenizer()
        return tokenize_prompts(tok, texts, self.config.max_text_len)

    def _bridge_queries(self, bridge: QFormerBridge, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, K, P, Dv] -> query embeddings in T5 space [N, K, Q, d].

        Questions about one clip share its frames: callers pass them as a stride-0 `expand` over N, and then each
        frame goes through the Q-Former once instead of once per question (the Q-Former never sees the text)."""
        n, k = frames.shape[:2]
        t5_dtype = self.t5.get_input_embeddings().weight.dtype  # the Q-Former may run in fp32 beside a bf16 T5
        if n > 1 and frames.stride(0) == 0:
            once = bridge(frames[0]).to(t5_dtype)  # [K, Q, d]
            return once.unsqueeze(0).expand(n, *once.shape)  # [N, K, Q, d] (a view)
        queries = bridge(frames.flatten(0, 1)).to(t5_dtype)  # [N*K, Q, d]
        return queries.view(n, k, *queries.shape[1:])  # [N, K, Q, d]

    def _sequences(self, bridge: QFormerBridge, frames: torch.Tensor, text: TokenizedText) -> EncoderInputs:
        """frames [N, K, P, Dv] + N prompt rows -> `[Frame 1: ][q1]..[Frame K: ][qK][prompt]` per row."""
        return self.assemble(self._bridge_queries(bridge, frames), text)  # queries [N, K, Q, d]

    def assemble(self, queries: torch.Tensor, text: TokenizedText) -> EncoderInputs:
        """queries [N, K, Q, d] + N prompt rows -> T5 encoder inputs (frame prefixes, queries, prompt)."""
        n, k = queries.shape[:2]
        device = queries.device
        blocks = []
        for i, ids in enumerate(self.frame_prefix_ids(k)):
            prefix = self.embed(torch.tensor(ids, device=device))  # [Lp_i, d]
            blocks.append(prefix.unsqueeze(0).expand(n, -1, -1))  # [N, Lp_i, d]
            blocks.append(queries[:, i])  # [N, Q, d]
        visual = torch.cat(blocks, dim=1)  # [N, Lv, d], Lv = sum(Lp_i) + K*Q
        words = self.embed(text.ids.to(device))  # [N, Lt, d]
        embeds = torch.cat([visual, words], dim=1)  # [N, Lv + Lt, d]
        vis_mask = torch.ones(n, visual.shape[1], dtype=torch.long, device=device)  # [N, Lv] visual always seen
        mask = torch.cat([vis_mask, text.mask.to(device)], dim=1)  # [N, Lv + Lt]; text right-padded
        return EncoderInputs(embeds=embeds, mask=mask, truncated=text.truncated, visual_len=visual.shape[1])

    def _repeat_rows(self, text: TokenizedText, times: int) -> TokenizedText:
        """B prompt rows -> B*times rows, each prompt repeated for its frames (question-major, frame-minor)."""
        return TokenizedText(
            ids=text.ids.repeat_interleave(times, dim=0),  # [B*T, Lt]
            mask=text.mask.repeat_interleave(times, dim=0),  # [B*T, Lt]
            truncated=text.truncated,  # [B]
        )

    def per_frame_inputs(self, module: str, features: torch.Tensor, texts: Sequence[str], slots: int = 1
                         ) -> EncoderInputs:
        """Each frame its own sequence: features [B, T, P, Dv] -> rows [B*T, L, d]. `slots` 1: `[Frame: ][q][prompt]`,
        the official per-frame path. `slots` k: the ONE frame in all k keyframe slots, `[Frame 1: ][q]..[Frame k: ][q]
        [prompt]`: still one frame's content, in the input an Answerer fine-tuned on k keyframes was trained on
        (the oracle of such an Answerer, `answer(frame_slots=k)`)."""
        self._check_features(features, f"{module} per-frame inputs")
        if slots < 1:
            raise ValueError(f"slots must be >= 1 (keyframe slots each frame fills), got {slots}")
        b, t = features.shape[:2]
        check_batch(texts, b, "prompts")
        text = self._repeat_rows(self.tokenize(texts), t)  # [B*T, Lt]
        if b > 1 and features.stride(0) == 0:  # B questions over one clip's T frames: T Q-Former passes, not B*T
            queries = self._bridge_queries(self.bridge(module), features[:1])  # [1, T, Q, d]
            queries = queries.expand(b, *queries.shape[1:]).reshape(b * t, 1, *queries.shape[2:])  # [B*T, 1, Q, d]
        else:
            frames = features.reshape(b * t, 1, *features.shape[2:])  # [B*T, 1, P, Dv]
            queries = self._bridge_queries(self.bridge(module), frames)  # [B*T, 1, Q, d]
        return self.assemble(queries.expand(-1, slots, -1, -1), text)  # [B*T, slots, Q, d] (a view) -> rows

    def answerer_inputs(self, features: torch.Tensor, texts: Sequence[str]) -> EncoderInputs:
        """All K frames of a question in one sequence: features [B, K, P, Dv] -> rows [B, L, d]."""
        self._check_features(features, "answerer inputs")
        check_batch(texts, features.shape[0], "prompts")
        return self._sequences(self.answerer, features, self.tokenize(texts))

    def decode(self, inputs: EncoderInputs, decoder_ids: torch.Tensor) -> torch.Tensor:
        """One batched encoder pass and one teacher-forced decoder pass: -> logits [N, S, V]."""
        out = self.t5(
            inputs_embeds=inputs.embeds,  # [N, L, d]
            attention_mask=inputs.mask,  # [N, L]
            decoder_input_ids=decoder_ids,  # [N, S]
            use_cache=False,
        )
        return out.logits  # [N, S, V]

    def start_ids(self, n: int, *more: int, device=None) -> torch.Tensor:
        start = self.t5.config.decoder_start_token_id
        return torch.tensor([[start, *more]] * n, dtype=torch.long, device=device)  # [N, 1 + len(more)]

    # ---- Localizer ---------------------------------------------------------------------------------------------

    def localize(self, features: torch.Tensor, loc_prompts: Sequence[str], n_keyframes: int | None = None
                 ) -> LocalizerOutput:
        """Score every frame (paper §3.1 Localizer): features [B, T, P, Dv] -> scores [B, T] = logit of `yes` at
        the first decoder step (decoder input = [start]); with `n_keyframes`, also the top-k in temporal order."""
        _, ids = self.require_tokenizer()
        b, t = features.shape[:2]
        inputs = self.per_frame_inputs("localizer", features, loc_prompts)  # [B*T, L, d]
        start = self.start_ids(b * t, device=inputs.embeds.device)  # [B*T, 1]
        logits = self.decode(inputs, start)[:, 0, :]  # [B*T, V] first decoder step
        scores = self.localizer.read_scores(logits, ids).view(b, t)  # [B, T]
        out = LocalizerOutput(scores=scores, truncated=inputs.truncated)
        if n_keyframes is not None:
            out.keyframes, out.keyframe_scores = localizer_topk(scores.detach(), n_keyframes)  # [B, k] each
        return out

    def localizer_loss(self, features: torch.Tensor, loc_prompts: Sequence[str], labels: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """LM loss of target `yes`/`no` for every frame (teacher forcing; paper §3.2-3.3).

        labels [B, T] bool (True = keyframe) -> (loss, truncated [B]).
        """
        tok, _ = self.require_tokenizer()
        b, t = features.shape[:2]
        if labels.shape != (b, t):
            raise ValueError(f"labels must be [B, T] = {(b, t)}, got {tuple(labels.shape)}")
        inputs = self.per_frame_inputs("localizer", features, loc_prompts)  # [B*T, L, d]
        targets = self.localizer.targets(labels)  # B*T strings
        return self.lm_loss(inputs, targets), inputs.truncated

    # ---- Answerer ----------------------------------------------------------------------------------------------

    def option_logits(self, inputs: EncoderInputs, n_options: torch.Tensor) -> torch.Tensor:
        """rows [N, L, d] -> option logits [N, C] read at the decoder step AFTER `Option`.

        Decoder input [start, ▁Option]: position 0 predicts `▁Option`, position 1 predicts the letter (official
        code: `generate(...).scores[1][:, answer_ids]`, which assumes the first generated token is `Option`).
        """
        _, ids = self.require_tokenizer()
        n = inputs.embeds.shape[0]
        dec = self.start_ids(n, ids.option, device=inputs.embeds.device)  # [N, 2]
        logits = self.decode(inputs, dec)[:, 1, :]  # [N, V] step after "Option"
        return self.answerer.read_options(logits, ids, n_options)  # [N, C]

    def answer_frames(self, features: torch.Tensor, qa_prompts: Sequence[str], n_options: Sequence[int] | torch.Tensor
                      ) -> AnswererOutput:
        """The Answerer reading K frames together (CONCAT): features [B, K, P, Dv] -> option logits [B, C]."""
        n_opt = n_options_tensor(n_options, features.shape[0])  # [B]
        inputs = self.answerer_inputs(features, qa_prompts)  # [B, L, d]
        logits = self.option_logits(inputs, n_opt)  # [B, C]
        return AnswererOutput(option_logits=logits, pred=logits.argmax(dim=1), truncated=inputs.truncated)

    def answer_each_frame(self, features: torch.Tensor, qa_prompts: Sequence[str],
                          n_options: Sequence[int] | torch.Tensor, slots: int = 1) -> AnswererOutput:
        """The Answerer on each frame ALONE, frames as batch items (VOTE, ORACLE, reverse-chain pseudo-labels):
        features [B, T, P, Dv] -> option logits [B, T, C], predictions [B, T]. `slots`: `per_frame_inputs`."""
        b, t = features.shape[:2]
        n_opt = n_options_tensor(n_options, b).repeat_interleave(t)  # [B*T]
        inputs = self.per_frame_inputs("answerer", features, qa_prompts, slots)  # [B*T, L, d]
        logits = self.option_logits(inputs, n_opt).view(b, t, -1)  # [B, T, C]
        return AnswererOutput(option_logits=logits, pred=logits.argmax(dim=2), truncated=inputs.truncated)

    def answerer_loss(self, features: torch.Tensor, qa_prompts: Sequence[str], answers: Sequence[int] | torch.Tensor,
                      n_options: Sequence[int] | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """LM loss of target `Option X` for the Answerer on K frames (paper §3.1; teacher forcing).

        features [B, K, P, Dv], answers [B] option index -> (loss, truncated [B])."""
        b = features.shape[0]
        answers = [int(a) for a in (answers.tolist() if torch.is_tensor(answers) else answers)]
        check_batch(answers, b, "answers")
        limits = n_options_tensor(n_options, b).tolist() if n_options is not None else [None] * b
        inputs = self.answerer_inputs(features, qa_prompts)  # [B, L, d]
        targets = self.answerer.targets(answers, limits)
        return self.lm_loss(inputs, targets), inputs.truncated

    def lm_loss(self, inputs: EncoderInputs, targets: list[str], z_loss: float = 0.0) -> torch.Tensor:
        """Mean token cross-entropy of target texts (incl. </s>), pads ignored: the official `outputs.loss`.
        `z_loss` > 0 (the synthetic bootstrap only, never the chain) adds z_loss * mean (log Z)^2 of the first decoder
        step, Z its softmax normaliser: it keeps a raw logit close to a log-probability at the step whose raw `yes`
        logit is the Localizer's score."""
        tok, _ = self.require_tokenizer()
        enc = tok(targets, padding="longest", return_tensors="pt")
        labels = enc.input_ids.masked_fill(enc.input_ids == tok.pad_token_id, -100).to(inputs.embeds.device)
        out = self.t5(
            inputs_embeds=inputs.embeds,  # [N, L, d]
            attention_mask=inputs.mask,  # [N, L]
            labels=labels,  # [N, S]; T5 shifts right behind [start]
            decoder_attention_mask=enc.attention_mask.to(inputs.embeds.device),  # [N, S]
            use_cache=False,
        )
        if z_loss:
            log_z = out.logits[:, 0, :].float().logsumexp(-1)  # [N] first decoder step (teacher forced from start)
            return out.loss + z_loss * (log_z ** 2).mean()
        return out.loss


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def check_batch(items: Sequence, b: int, what: str) -> None:
    if len(items) != b:
        raise ValueError(f"{what}: got {len(items)} for a batch of {b} questions")


def n_options_tensor(n_options: Sequence[int] | torch.Tensor, b: int) -> torch.Tensor:
    n = torch.as_tensor(n_options if torch.is_tensor(n_options) else list(n_options), dtype=torch.long)  # [B]
    if n.shape != (b,):
        raise ValueError(f"n_options: need one count per question ({b}), got shape {tuple(n.shape)}")
    bad = ((n < 1) | (n > len(prompts.OPTION_LETTERS))).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"n_options out of 1..{len(prompts.OPTION_LETTERS)} for batch items {bad}: "
                         f"{n[bad].tolist()}")
    return n


def build_sevila(config: SeViLAConfig, tokenizer=None, device: str | torch.device | None = None) -> SeViLA:
    """Build the model; on `device="meta"` nothing is allocated (parameter counting of the real preset)."""
    if device is None:
        return SeViLA(config, tokenizer)
    with torch.device(device):
        return SeViLA(config, tokenizer)


def parameter_counts(model: SeViLA) -> ParamCounts:
    """Parameters per part (vision, t5, <module>.<qformer|query_tokens|proj|ln_vision>) and per module trainable.

    Counting follows HF Blip2QFormerModel, which (like the Q-Former LAVIS's BLIP-2-T5 actually uses, with
    `word_embeddings`, `position_embeddings`, `cls` and the text FFN set to None) holds no BERT word embeddings.
    T5's shared input embedding is counted once; Flan-T5's separate lm_head is counted.
    """

    def count(m: nn.Module | nn.Parameter) -> int:
        if isinstance(m, nn.Parameter):
            return m.numel()
        return sum(p.numel() for p in m.parameters())

    parts = {"vision": count(model.vision), "t5": count(model.t5)}
    for name in MODULES:
        bridge = model.bridge(name)
        for part in _BRIDGE_PARTS:
            parts[f"{name}.{part}"] = count(getattr(bridge, part))
    total = sum(p.numel() for p in model.parameters())
    if total != sum(parts.values()):
        raise RuntimeError(f"parts ({sum(parts.values())}) do not add up to the total ({total})")
    trainable = {name: count(model.bridge(name)) for name in MODULES}
    requires_grad = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return ParamCounts(total=total, parts=parts, trainable=trainable, requires_grad=requires_grad)
