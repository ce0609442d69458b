"""SeViLA at its real size (ViT-g/14 + two Q-Formers + Flan-T5-XL, 4.05B parameters) on whatever device this machine has.

    python bench/real_size.py [--device auto|cpu|cuda] [--questions B] [--micro-batch 8] [--peak-tflops 989]
                              [--vit-layers N --qformer-layers N --t5-layers N] [--tiny-smoke]
                              [--out bench/results/real_size.json]

Random weights (nothing is downloaded) and a tokenizer trained here (sevila.model.tokenizer.build_tiny_tokenizer): its
ids
all fit below Flan-T5's 32,128, and T5's embedding and lm_head keep that real vocabulary size. Every prompt is
longer than the official 77-token cut (`max_txt_len`), so every T5 row carries the full 77 text tokens: the
text cost of the longest prompts the official code feeds (real NExT-QA prompts with five options are shorter or
at the cut).

Measured:
(a) questions per second of the forward chain (paper §3.1) for B questions of one clip in one batch, as the stages
    run it (`chain.answer`, selector=localizer, fusion=concat): the Localizer scores all T=32 frames (each frame
    its own T5 sequence, one decoder step), top-4 keyframes, the Answerer reads them in one sequence. Timed from
    cached ViT features (every variant and refinement round after the first), and with the ViT pass over the clip's
    T frames added (the first pass over a video; the ViT is timed on --vit-frames frames and scaled to T: each
    frame's pass is independent of the others).
(b) peak memory of ONE Answerer fine-tuning step at micro-batch 8 (4 keyframes each): forward, backward into the
    Answerer's Q-Former through the frozen T5, gradient clipping and an AdamW update, as sevila/training/loop.py does
    one
    micro-step. GPU: torch.cuda.max_memory_allocated; CPU: the process's RSS high-water during the step (psutil
    sampled every 5 ms; ru_maxrss when psutil is missing).
(c) the MFU those imply: FLOPs counted with torch.utils.flop_counter.FlopCounterMode (matmul, attention and
    convolution FLOPs as torch dispatches them, 2 per multiply-add; elementwise work not counted) on a meta-device
    copy of the same model (nothing computed, so the count costs no time), divided by the measured time and by the
    device's peak: on a GPU the bf16 dense peak given by --peak-tflops (default 989 TFLOP/s, the H200's), on a CPU
    the fp32 GEMM rate measured here (a 2048^3 torch.matmul, as bench/forward_chain.py does; on a shared machine
    other processes' load moves both the timings and that rate, so a CPU ratio is good to about +-30%).

Precision as the pipeline's `Precision.AUTO`: on a CUDA device with bf16, the frozen ViT and T5 are HELD in bf16 and
run under torch.no_grad() where nothing trains through them (the ViT always; T5 in the chain; in the training step
T5 keeps its activations, since the gradient reaches the Answerer's Q-Former through it, but its weights take no
gradient); the trainable Q-Former and projection stay fp32 and run under bf16 autocast. On a CPU all is fp32.

On a CPU the model is built at REDUCED DEPTH (full widths, full vocabulary, fewer layers: --vit-layers,
--qformer-layers, --t5-layers; one question per chain batch; the ViT timed on 2 frames) so the run ends in
about a minute on two cores; the output says so, the JSON has
"reduced_depth": true and the layer counts, and "full_depth_estimate" scales each measured time by the FLOP ratio
of the full-depth model to the reduced one (both counted exactly), and the peak memory by the exact differences
in weights, optimizer state and tensors saved for backward: estimates, labelled as such.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import resource
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import masking_utils

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.forward_chain import gemm_gflops  # noqa: E402
from sevila.atomic import atomic_write_json  # noqa: E402
from sevila.config import Precision  # noqa: E402
from sevila.model import prompts  # noqa: E402
from sevila.model import chain
from sevila.model.configuration import SeViLAConfig, sevila_flant5xl
from sevila.model.modeling import SeViLA, build_sevila, parameter_counts  # noqa: E402
from sevila.model.precision import hold_frozen, use_bf16  # noqa: E402
from sevila.model.selection import Fusion, Selector  # noqa: E402
from sevila.model.tokenizer import build_tiny_tokenizer  # noqa: E402
from sevila.training.loop import param_groups

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet: 1,979 TFLOP/s bf16 with sparsity, half of it dense
N_OPTIONS = 5  # NExT-QA's five options (the longest Answerer prompts)


@dataclass(frozen=True)
class Depth:
    """Layer counts of the stacks that set the cost: ViT, each Q-Former, T5 encoder and T5 decoder."""

    vit: int
    qformer: int
    t5_encoder: int
    t5_decoder: int


FULL = Depth(vit=39, qformer=12, t5_encoder=24, t5_decoder=24)  # sevila_flant5xl()
CPU_DEPTH = Depth(vit=1, qformer=2, t5_encoder=1, t5_decoder=1)
SMOKE = dict(frames=2, keyframes=1, questions=1, micro_batch=1, vit_frames=1)


def config_at(depth: Depth) -> SeViLAConfig:
    """sevila_flant5xl() with other layer counts; every width, head count and the vocabulary stay real."""
    real = sevila_flant5xl()
    return SeViLAConfig.from_dict(real.to_dict() | {
        "vision": real.vision | {"num_hidden_layers": depth.vit},
        "qformer": real.qformer | {"num_hidden_layers": depth.qformer},
        "t5": real.t5 | {"num_layers": depth.t5_encoder, "num_decoder_layers": depth.t5_decoder},
    })


def random_model(config: SeViLAConfig, tok, device: torch.device, bf16: bool, seed: int) -> SeViLA:
    """The model with random weights, allocated once in its final dtypes: built on the meta device, then filled
    (matrices N(0, 0.02) as BLIP-2 and T5 initialise them, LayerNorm gains 1, biases 0). transformers' own
    initialisation draws every weight twice (torch's default, then its own) and costs more than the measurements
    on a CPU; the values do not change what is measured."""
    model = hold_frozen(build_sevila(config, tok, device="meta"), bf16).to_empty(device=device)
    model.t5.tie_weights()  # to_empty gives every module its own tensor: T5's embeddings share one again
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=gen)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
    return model


def bench_prompts(tok, n: int, max_len: int) -> tuple[list[str], list[str]]:
    """n (Answerer, Localizer) prompt pairs, all longer than `max_len` tokens, so every row is cut at the limit."""
    words = ("why", "did", "the", "boy", "pick", "up", "red", "ball", "after", "girl", "waved", "at", "him")
    pairs = []
    for i in range(n):
        question = " ".join(words[(i + j) % len(words)] for j in range(3 * max_len)) + "?"
        options = [f"{words[(i + j) % len(words)]} {words[(i + 2 * j) % len(words)]}" for j in range(N_OPTIONS)]
        pairs.append(prompts.qa_prompts(question, options))
    qa, loc = (list(x) for x in zip(*pairs))
    too_short = [p for p in qa + loc if len(tok(p).input_ids) <= max_len]
    if too_short:
        raise RuntimeError(f"bench prompt shorter than the {max_len}-token cut: {too_short[0]!r}")
    return qa, loc


# ------------------------------------------------------------------------------------------------ the work


def run_chain(model: SeViLA, feats: torch.Tensor, qa: list[str], loc: list[str], k: int):
    """The forward chain for B questions of one clip, feats [T, P, Dv] shared (stride-0 expand, as the stages pass
    it: one Q-Former pass per frame for all questions)."""
    b = len(qa)
    return chain.answer(model, feats.unsqueeze(0).expand(b, *feats.shape), qa, [N_OPTIONS] * b, selector=Selector.LOCALIZER,
                        fusion=Fusion.CONCAT, n_keyframes=k, loc_prompts=loc)


def finetune_step(model: SeViLA, optimizer: torch.optim.Optimizer, feats: torch.Tensor, qa: list[str],
                  bf16: bool) -> float:
    """One Answerer micro-step of sevila/training/loop.py (accumulation 1): autocast forward, backward, clip at 1.0, AdamW."""
    device_type = feats.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss, _ = model.answerer_loss(feats, qa, [i % N_OPTIONS for i in range(len(qa))], [N_OPTIONS] * len(qa))
    loss.float().backward()
    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach().float()) if device_type != "meta" else float("nan")


def answerer_optimizer(model: SeViLA) -> torch.optim.Optimizer:
    model.set_trainable(answerer=True)
    model.train()
    return torch.optim.AdamW(param_groups(model, 0.05), lr=1e-5)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one untimed warm-up call on a GPU (first calls pick kernels and
    allocate); on a CPU no warm-up (the first call costs what later ones do, and CPU time is scarce)."""
    if device.type == "cuda":
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def rss_peak() -> Iterator[dict]:
    """The process's RSS high-water while the block runs, in bytes (`out["peak"]`), and the RSS before it."""
    out: dict = {}
    try:
        import psutil
    except ImportError:  # ru_maxrss: the process's lifetime peak (KiB on Linux), an upper bound for the block
        out["method"] = "ru_maxrss (lifetime high-water: psutil is not installed)"
        out["before"] = 0
        yield out
        out["peak"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return
    proc = psutil.Process()
    out["method"] = "psutil RSS sampled every 5 ms"
    out["before"] = out["peak"] = proc.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            out["peak"] = max(out["peak"], proc.memory_info().rss)
            done.wait(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        done.set()
        thread.join()
        out["peak"] = max(out["peak"], proc.memory_info().rss)


# ---------------------------------------------------------------------------------------------- counting


@contextlib.contextmanager
def meta_masks() -> Iterator[None]:
    """transformers skips building an all-ones attention mask by reading its values (`mask.all()`), which a meta
    tensor cannot do; always building it changes no result and no counted FLOP (masks are elementwise work)."""
    with mock.patch.object(masking_utils, "_ignore_bidirectional_mask_sdpa", return_value=False), \
            mock.patch.object(masking_utils, "_ignore_causal_mask_sdpa", return_value=False):
        yield


#: Module names (as FlopCounterMode's module tracker writes them) of one layer of each stack; group 1 = its index.
LAYER_NAMES = {
    "vit": re.compile(r"(?:^|\.)layers\.(\d+)$"),  # Blip2VisionEncoder.layers.N
    "qformer": re.compile(r"qformer\.encoder\.layer\.(\d+)$"),  # Localizer/Answerer.qformer.encoder.layer.N
    "t5_encoder": re.compile(r"encoder\.block\.(\d+)$"),  # FlanT5.encoder.block.N
    "t5_decoder": re.compile(r"decoder\.block\.(\d+)$"),  # FlanT5.decoder.block.N
}
#: The depth the full model's FLOPs are counted at (meta device), then extrapolated. Within a stack every layer
#: but the first costs the same (the first differs in the backward: its input may need no gradient, e.g. the
#: decoder's label embeddings; Q-Former layers alternate with and without cross-attention, so count in pairs), so
#: every count is affine in each stack's layer count from two layers (Q-Former: two pairs) on (`Cost.at`).
COUNT_DEPTH = Depth(vit=2, qformer=4, t5_encoder=2, t5_decoder=2)


@dataclass(frozen=True)
class Cost:
    """FLOPs (or bytes) of one measurement counted at `depth`, and what one more layer of each stack adds (the
    stack's last layer; the Q-Former's last pair, halved)."""

    depth: Depth
    total: int
    per_layer: dict[str, float]  # stack (a Depth field) -> FLOPs or bytes of one more layer of it

    def at(self, depth: Depth) -> float:
        if depth == self.depth:
            return self.total
        if any(getattr(depth, s) < getattr(COUNT_DEPTH, s) for s in LAYER_NAMES) or self.depth != COUNT_DEPTH:
            raise ValueError(f"extrapolates from {COUNT_DEPTH} to deeper models only, not to {depth}")
        return self.total + sum((getattr(depth, s) - getattr(self.depth, s)) * v for s, v in self.per_layer.items())

    @classmethod
    def of(cls, depth: Depth, total: int, by_layer: dict[tuple[str, int], float]) -> "Cost":
        """`by_layer`: (stack, layer index) -> FLOPs or bytes of that layer (both Q-Formers' summed)."""
        def last(stack: str) -> float:
            n = getattr(depth, stack)
            idx = (n - 2, n - 1) if stack == "qformer" else (n - 1,)
            return sum(by_layer.get((stack, i), 0) for i in idx) / len(idx)

        return cls(depth, total, {s: last(s) for s in LAYER_NAMES})


def flop_cost(fc: FlopCounterMode, depth: Depth) -> Cost:
    by_layer: dict[tuple[str, int], float] = {}
    for name, ops in fc.get_flop_counts().items():
        for stack, pattern in LAYER_NAMES.items():
            if m := pattern.search(name):
                key = (stack, int(m.group(1)))
                by_layer[key] = by_layer.get(key, 0) + sum(ops.values())
                break
    return Cost.of(depth, fc.get_total_flops(), by_layer)


@dataclass(frozen=True)
class Counts:
    vit_per_frame: Cost  # FLOPs of the ViT on one frame
    chain: Cost  # FLOPs of the chain on B questions
    step: Cost  # FLOPs of forward + backward of one Answerer micro-batch
    step_saved_bytes: Cost  # bytes autograd keeps for backward in that step (activations; parameters excluded)


def count(tok, bf16: bool, n_frames: int, k: int, qa: list[str], loc: list[str], micro_batch: int,
          depth: Depth = COUNT_DEPTH) -> Counts:
    """FLOPs and saved-for-backward bytes of the bench's three measurements, on a meta-device copy of the model at
    `depth` (nothing is computed or allocated). The fine-tuning step's FLOPs per layer come from counting it again
    one layer (Q-Former: one pair) deeper per stack: FlopCounterMode's module tracker attributes backward FLOPs to
    the wrong layer at times, its totals are right; forward attributions (ViT, chain) are exact."""
    config = config_at(depth)
    model = hold_frozen(build_sevila(config, tok, device="meta"), bf16)
    p, dv = config.n_vision_tokens, config.vision_config().hidden_size
    feat_dtype = torch.bfloat16 if bf16 else torch.float32
    with meta_masks():
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model.encode_frames(torch.empty(1, 3, config.image_size, config.image_size, device="meta",
                                            dtype=feat_dtype))
        vit = flop_cost(fc, depth)
        feats = torch.empty(n_frames, p, dv, device="meta", dtype=feat_dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            run_chain(model, feats, qa, loc, k)
        chain = flop_cost(fc, depth)
    step_flops, saved = count_step(model, depth, k, qa, micro_batch, feat_dtype)
    per_layer: dict[str, float] = {}
    if depth == COUNT_DEPTH:  # the base of extrapolations: what one more layer of each stack adds
        per_layer["vit"] = 0.0  # the step starts from cached features
        for stack, more in (("qformer", 2), ("t5_encoder", 1), ("t5_decoder", 1)):
            deeper = replace(depth, **{stack: getattr(depth, stack) + more})
            deeper_model = hold_frozen(build_sevila(config_at(deeper), tok, device="meta"), bf16)
            per_layer[stack] = (count_step(deeper_model, deeper, k, qa, micro_batch, feat_dtype)[0] - step_flops) / more
    return Counts(vit, chain, Cost(depth, step_flops, per_layer), saved)


def count_step(model: SeViLA, depth: Depth, k: int, qa: list[str], micro_batch: int, feat_dtype: torch.dtype
               ) -> tuple[int, Cost]:
    """FLOPs of one Answerer fine-tuning step on the meta `model`, and the bytes autograd saves for its backward
    (parameters excluded), per layer."""
    config = model.config
    optimizer = answerer_optimizer(model)
    params = {t.untyped_storage()._cdata for t in model.parameters()}
    saved: dict[int, tuple[tuple[str, int] | None, int]] = {}  # storage -> (layer that saved it, bytes)
    running: list[tuple[str, int]] = []  # the (stack, index) of the layer running forward, if any
    stacks = {"vit": model.vision.encoder.layers, "t5_encoder": model.t5.encoder.block,
              "t5_decoder": model.t5.decoder.block,
              "qformer": [*model.localizer.qformer.encoder.layer, *model.answerer.qformer.encoder.layer]}

    def enter(layer: tuple[str, int]) -> Callable:
        return lambda *_: running.append(layer)  # None: the layer's inputs stay as they are

    def leave(*_) -> None:
        running.pop()

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved.setdefault(storage._cdata, (running[-1] if running else None, storage.nbytes()))
        return t

    hooks = [h for s, layers in stacks.items() for i, layer in enumerate(layers) for h in (
        layer.register_forward_pre_hook(enter((s, i % getattr(depth, s)))), layer.register_forward_hook(leave))]
    feats = torch.empty(micro_batch, k, config.n_vision_tokens, config.vision_config().hidden_size, device="meta",
                        dtype=feat_dtype)
    try:
        with meta_masks(), FlopCounterMode(display=False) as fc, \
                torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            finetune_step(model, optimizer, feats, qa_batch(qa, micro_batch), bf16=False)
    finally:
        for h in hooks:
            h.remove()
    by_layer: dict[tuple[str, int], float] = {}
    for owner, nbytes in saved.values():
        if owner is not None:
            by_layer[owner] = by_layer.get(owner, 0) + nbytes
    return fc.get_total_flops(), Cost.of(depth, sum(b for _, b in saved.values()), by_layer)


@dataclass(frozen=True)
class Sizes:
    parameters: int
    weight_bytes: int  # as held on the device (frozen ViT/T5 in bf16 when bf16 is on)
    trainable_answerer: int


def sizes(depth: Depth, bf16: bool) -> Sizes:
    model = hold_frozen(build_sevila(config_at(depth), device="meta"), bf16)
    n = parameter_counts(model)
    return Sizes(n.total, sum(t.numel() * t.element_size() for t in model.parameters()), n.trainable["answerer"])


def qa_batch(qa: list[str], n: int) -> list[str]:
    return [qa[i % len(qa)] for i in range(n)]


# -------------------------------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, torch.device, Depth]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--precision", choices=[p.value for p in Precision], default=Precision.AUTO.value,
                    help="as TrainConfig.precision: auto = bf16 on a CUDA device with bf16, fp32 elsewhere")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--keyframes", type=int, default=4)
    ap.add_argument("--questions", type=int, default=None,
                    help="questions of one clip in one chain batch (default 8 on a GPU, 1 on a CPU)")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--vit-frames", type=int, default=None,
                    help="frames the ViT is timed on, scaled to --frames (default: all on a GPU, 2 on a CPU)")
    ap.add_argument("--vit-layers", type=int, default=None, help=f"default {FULL.vit} on a GPU, {CPU_DEPTH.vit} on a CPU")
    ap.add_argument("--qformer-layers", type=int, default=None,
                    help=f"each Q-Former; even (cross-attention every 2nd layer); default {FULL.qformer} on a GPU, "
                         f"{CPU_DEPTH.qformer} on a CPU")
    ap.add_argument("--t5-layers", type=int, default=None,
                    help=f"T5 encoder and decoder layers each; default {FULL.t5_encoder} on a GPU, "
                         f"{CPU_DEPTH.t5_encoder} on a CPU")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (median; default 3 on a GPU, 1 on a CPU)")
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                    help="the GPU's dense bf16 peak for the MFU (default: H200, 989 TFLOP/s)")
    ap.add_argument("--threads", type=int, default=None, help="CPU torch threads (default: torch's setting)")
    ap.add_argument("--tiny-smoke", action="store_true",
                    help="smallest run (depth 1 everywhere but 2 Q-Former layers, "
                         + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in SMOKE.items()) + "): tests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "real_size.json")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    gpu = device.type == "cuda"
    if args.tiny_smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    base = FULL if gpu and not args.tiny_smoke else CPU_DEPTH
    def given(value: int | None, default: int) -> int:
        return default if value is None else value

    depth = Depth(vit=given(args.vit_layers, base.vit), qformer=given(args.qformer_layers, base.qformer),
                  t5_encoder=given(args.t5_layers, base.t5_encoder), t5_decoder=given(args.t5_layers, base.t5_decoder))
    args.questions = given(args.questions, 8 if gpu else 1)
    args.vit_frames = given(args.vit_frames, args.frames if gpu else min(2, args.frames))
    args.repeats = given(args.repeats, 3 if gpu else 1)
    for name in ("frames", "keyframes", "questions", "micro_batch", "vit_frames", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.keyframes > args.frames:
        ap.error(f"--keyframes {args.keyframes} is more than --frames {args.frames}")
    if args.vit_frames > args.frames:
        ap.error(f"--vit-frames {args.vit_frames} is more than --frames {args.frames}")
    for name, full in asdict(FULL).items():
        if not 1 <= getattr(depth, name) <= full:
            ap.error(f"{name} layers must be in 1..{full} (the real model's), got {getattr(depth, name)}")
    if depth.qformer % 2:
        ap.error(f"--qformer-layers must be even (BLIP-2 cross-attends every 2nd layer), got {depth.qformer}")
    if not args.peak_tflops > 0:
        ap.error(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    return args, device, depth


def main(argv: list[str] | None = None) -> int:
    args, device, depth = parse(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    bf16 = use_bf16(Precision(args.precision), device)
    reduced = depth != FULL
    config = config_at(depth)
    with tempfile.TemporaryDirectory(prefix="sevila-real-size-") as work:
        tok = build_tiny_tokenizer([], Path(work) / "tok", vocab_size=256)
    qa, loc = bench_prompts(tok, args.questions, config.max_text_len)
    if reduced:
        print(f"REDUCED DEPTH on {device.type}: ViT {depth.vit}/{FULL.vit} layers, Q-Former {depth.qformer}/"
              f"{FULL.qformer}, T5 encoder {depth.t5_encoder}/{FULL.t5_encoder} + decoder {depth.t5_decoder}/"
              f"{FULL.t5_decoder}; full widths and vocabulary. Full-depth figures below are ESTIMATES.", flush=True)

    counted = partial(count, tok, bf16, args.frames, args.keyframes, qa, loc, args.micro_batch)
    base = counted()  # at COUNT_DEPTH: extrapolates to the full depth (and to any depth at least as deep)
    shallow = any(getattr(depth, s) < getattr(COUNT_DEPTH, s) for s in LAYER_NAMES)
    here = counted(depth=depth) if shallow else base

    def at(name: str, d: Depth) -> float:
        return getattr(here if d == depth else base, name).at(d)
    size, full_size = sizes(depth, bf16), sizes(FULL, bf16)

    model = random_model(config, tok, device, bf16, args.seed)
    n_params = parameter_counts(model).total
    if n_params != size.parameters:
        raise RuntimeError(f"the built model has {n_params} parameters, its config {size.parameters}")
    print(f"model {n_params / 1e9:.3f}B parameters (full depth {full_size.parameters / 1e9:.3f}B); "
          f"{device.type}, {'bf16 frozen ViT/T5 + bf16 autocast' if bf16 else 'fp32'}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); built in {time.perf_counter() - t_start:.0f} s", flush=True)

    feat_dtype = torch.bfloat16 if bf16 else torch.float32
    gen = torch.Generator(device=device).manual_seed(args.seed)
    gemm = [] if device.type == "cuda" else [gemm_gflops(2048, 2)]  # CPU: sampled before and after the timings
    pixels = torch.randn(args.vit_frames, 3, config.image_size, config.image_size, device=device, generator=gen)
    feats = torch.randn(args.frames, config.n_vision_tokens, config.vision_config().hidden_size, device=device,
                        generator=gen, dtype=feat_dtype)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        vit_s = timed(lambda: model.encode_frames(pixels.to(feat_dtype)), device, args.repeats)
        chain_s = timed(lambda: run_chain(model, feats, qa, loc, args.keyframes), device, args.repeats)
    vit_s_per_frame = vit_s / args.vit_frames

    optimizer = answerer_optimizer(model)
    step_feats = feats[: args.keyframes].unsqueeze(0).expand(args.micro_batch, -1, -1, -1).contiguous()
    step_qa = qa_batch(qa, args.micro_batch)
    if device.type == "cuda":
        finetune_step(model, optimizer, step_feats, step_qa, bf16)  # warm-up (allocates the AdamW state)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        loss = finetune_step(model, optimizer, step_feats, step_qa, bf16)
        sync(device)
        step_s = time.perf_counter() - t0
        memory = {"method": "torch.cuda.max_memory_allocated (after one warm-up step: AdamW state allocated)",
                  "before": before, "peak": torch.cuda.max_memory_allocated(device),
                  "reserved_peak": torch.cuda.max_memory_reserved(device)}
    else:
        with rss_peak() as memory:
            t0 = time.perf_counter()
            loss = finetune_step(model, optimizer, step_feats, step_qa, bf16)
            step_s = time.perf_counter() - t0
    del optimizer, model

    if device.type == "cuda":
        peak_flops = args.peak_tflops * 1e12
        peak_what = f"bf16 dense peak {args.peak_tflops:g} TFLOP/s (--peak-tflops; default = H200)"
    else:  # the higher of two samples: on a shared machine the lower one caught other load
        gemm.append(gemm_gflops(2048, 2))
        peak_flops = max(gemm) * 1e9
        peak_what = (f"this CPU's measured fp32 GEMM rate (2048^3 matmul, {torch.get_num_threads()} thread(s); the "
                     f"higher of {', '.join(f'{g:.1f}' for g in gemm)} GFLOP/s sampled before and after the timings)")

    def figures(d: Depth, vit_pf: float, chain: float, step: float) -> dict:
        flops = {"vit_per_frame": at("vit_per_frame", d), "chain_batch": at("chain", d),
                 "finetune_step": at("step", d)}
        with_vit = args.frames * vit_pf + chain
        return {
            "questions_per_second_cached_features": args.questions / chain,
            "questions_per_second_with_vit": args.questions / with_vit,
            "seconds": {"vit_per_frame": vit_pf, "chain_batch": chain, "finetune_step": step},
            "flops": flops,
            "mfu": {"chain_cached_features": flops["chain_batch"] / chain / peak_flops,
                    "chain_with_vit": (flops["chain_batch"] + args.frames * flops["vit_per_frame"]) / with_vit
                    / peak_flops,
                    "finetune_step": flops["finetune_step"] / step / peak_flops},
        }

    measured = figures(depth, vit_s_per_frame, chain_s, step_s) | {
        "finetune_step_memory_bytes": {k: v for k, v in memory.items() if k != "method"},
        "memory_method": memory["method"], "finetune_loss": loss,
        "finetune_step_saved_for_backward_bytes": at("step_saved_bytes", depth)}
    result = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
        (platform.processor() or platform.machine()),
        "reduced_depth": reduced,
        "layers": asdict(depth), "full_layers": asdict(FULL),
        "parameters": n_params, "parameters_full_depth": full_size.parameters,
        "weight_bytes": size.weight_bytes, "weight_bytes_full_depth": full_size.weight_bytes,
        "trainable_answerer_parameters": size.trainable_answerer,
        "precision": "bf16 (frozen ViT/T5 held in bf16, bridges fp32 under bf16 autocast)" if bf16 else "fp32",
        "setup": {"frames": args.frames, "keyframes": args.keyframes, "questions_per_batch": args.questions,
                  "micro_batch": args.micro_batch, "vit_timed_on_frames": args.vit_frames, "repeats": args.repeats,
                  "prompt_tokens": config.max_text_len, "vocab_size": config.t5_config().vocab_size,
                  "tokenizer_size": len(tok), "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "cpus": os.cpu_count()},
        "peak_flops_per_second": peak_flops, "peak_flops_is": peak_what,
        "measured": measured,
        "flops_counted_by": f"torch.utils.flop_counter.FlopCounterMode on a meta-device copy at depth "
                            f"{asdict(COUNT_DEPTH)} extrapolated per layer to deeper models (exact: past the first, "
                            f"every layer of a stack costs the same), shallower ones counted as they are; "
                            f"matmul/attention/conv, 2 per multiply-add; elementwise work not counted",
    }
    if reduced:
        def scaled(seconds: float, name: str) -> float:
            return seconds * at(name, FULL) / at(name, depth)

        est = figures(FULL, scaled(vit_s_per_frame, "vit_per_frame"), scaled(chain_s, "chain"),
                      scaled(step_s, "step"))
        extra = (full_size.weight_bytes - size.weight_bytes
                 + at("step_saved_bytes", FULL) - at("step_saved_bytes", depth)
                 + 12 * (full_size.trainable_answerer - size.trainable_answerer))  # fp32 grad + 2 AdamW moments
        est["finetune_step_peak_memory_bytes"] = memory["peak"] + extra
        est["how"] = ("ESTIMATE, not measured: each time x (full-depth FLOPs / reduced-depth FLOPs, both counted), "
                      "i.e. the same FLOP rate at full depth; peak memory = measured peak + the exact full-minus-"
                      "reduced differences in weight bytes, AdamW state + gradients of the Answerer bridge, and "
                      "bytes autograd saves for backward")
        result["full_depth_estimate"] = est
    result["wall_seconds"] = time.perf_counter() - t_start
    atomic_write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


def print_table(r: dict) -> None:
    rows = [("measured" + (" (REDUCED DEPTH)" if r["reduced_depth"] else ""), r["measured"])]
    if r["reduced_depth"]:
        rows.append(("full depth, ESTIMATE", r["full_depth_estimate"]))
    print(f"\n{'':<30} {'q/s cached':>11} {'q/s +ViT':>10} {'step s':>9} {'step peak GB':>13} "
          f"{'MFU chain':>10} {'MFU +ViT':>9} {'MFU step':>9}")
    for name, f in rows:
        peak = f.get("finetune_step_peak_memory_bytes", f.get("finetune_step_memory_bytes", {}).get("peak"))
        print(f"{name:<30} {f['questions_per_second_cached_features']:>11.3f} "
              f"{f['questions_per_second_with_vit']:>10.3f} {f['seconds']['finetune_step']:>9.2f} "
              f"{peak / 1e9:>13.2f} {100 * f['mfu']['chain_cached_features']:>9.1f}% "
              f"{100 * f['mfu']['chain_with_vit']:>8.1f}% {100 * f['mfu']['finetune_step']:>8.1f}%")
    print(f"MFU against {r['peak_flops_is']}: {r['peak_flops_per_second'] / 1e12:.3f} TFLOP/s")


if __name__ == "__main__":
    sys.exit(main())
