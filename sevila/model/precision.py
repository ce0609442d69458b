"""The precision SeViLA runs in (paper §3.1; docs/design.md §2): bf16 where the device has it, never fp16 (Flan-T5
overflows in fp16). One policy read by the training loop (sevila.training.loop) and by inference
(sevila.weights.load), so training and inference hold the frozen parts the same way."""
from __future__ import annotations

import torch
from torch import nn

from sevila.config.modes import Precision


def use_bf16(precision: Precision, device: torch.device, bf16_supported: bool | None = None) -> bool:
    """Whether `precision` computes in bf16 on `device`. `bf16_supported` says whether a CUDA device has bf16
    (None: ask torch.cuda), so the policy is a pure function of its arguments when it is given."""
    if precision is Precision.FP32:
        return False
    if precision is Precision.BF16:
        return True
    if torch.device(device).type != "cuda":
        return False
    return torch.cuda.is_bf16_supported() if bf16_supported is None else bool(bf16_supported)


def hold_frozen(model: nn.Module, bf16: bool) -> nn.Module:
    """The precision SeViLA runs in (paper §3.1: ViT and Flan-T5 frozen, only the Q-Former bridges train): with
    bf16 the frozen ViT and T5 are HELD in bf16 (they never train, so no fp32 master copy is needed: half the
    memory of 4B parameters), while the bridges stay fp32 (they train; `train` runs their matmuls under bf16
    autocast). Every part is frozen and the model in eval mode until a stage switches one module on."""
    if bf16:
        model.vision.to(torch.bfloat16)
        model.t5.to(torch.bfloat16)
    model.set_trainable(localizer=False, answerer=False)
    return model.eval()
