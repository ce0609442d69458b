"""The tiny project's `bootstrap` stage (tests/flows/conftest.py): a random tiny backbone with a tokenizer built
from the world's text, at params.yaml's `model.weights` (run by DVC in the project root)."""
from __future__ import annotations

from pathlib import Path

import torch

from sevila.weights.ours import save_sevila
from sevila.config import load_config
from sevila.synthetic.world import world_text
from sevila.atomic import atomic_write_json
from sevila.model.modeling import SeViLA
from sevila.model.configuration import sevila_tiny
from sevila.model.tokenizer import build_tiny_tokenizer

if __name__ == "__main__":
    cfg = load_config("params.yaml")
    tok = build_tiny_tokenizer(world_text(), Path("tok"), vocab_size=256, overwrite=True)
    torch.manual_seed(0)
    save_sevila(SeViLA(sevila_tiny(len(tok)), tok), cfg.model.weights, modules=("vision", "t5", "localizer", "answerer"))
    atomic_write_json(Path(cfg.paths.reports, "bootstrap.json"), {"tiny": True, "vocab": len(tok)})
    print(f"tiny backbone: a random sevila_tiny at {cfg.model.weights}")
