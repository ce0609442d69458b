"""The toy problem the training-loop tests share (in-process and in the subprocess workers): a frozen
"backbone" and a trainable "head" with LayerNorm and dropout, on synthetic regression data. It stands in for
SeViLA's frozen ViT/LLM + trainable Q-Former without importing the real model."""
from __future__ import annotations

import torch
from torch import nn

IN_DIM, HIDDEN = 6, 12


class Toy(nn.Module):
    def __init__(self, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(IN_DIM, HIDDEN), nn.Tanh())
        self.head = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.LayerNorm(HIDDEN), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(HIDDEN, 1))
        with torch.no_grad():  # seeded init, independent of the global RNG
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.backbone.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(-1)


def make_dataset(n: int = 48, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, IN_DIM, generator=g)
    y = torch.sin(x.sum(-1)) + 0.1 * torch.randn(n, generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def mse_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return ((model(batch["x"]) - batch["y"]) ** 2).mean()


def make_eval_fn(data: list[dict[str, torch.Tensor]], noisy: bool = False):
    """Validation metrics; `noisy` draws from the global RNG, as a sampling-based evaluation would, to check
    that evaluation does not perturb the training trajectory."""
    x = torch.stack([d["x"] for d in data])
    y = torch.stack([d["y"] for d in data])

    def eval_fn(model: nn.Module) -> dict[str, float]:
        mse = float(((model(x) - y) ** 2).mean())
        if noisy:
            mse += 1e-3 * float(torch.rand(()))
        return {"val/mse": mse, "val/neg_mse": -mse}

    return eval_fn
