"""Fixtures for the model tests: a tiny tokenizer trained offline on a fixed corpus and a tiny SeViLA, both built
once per session (read-only: tests that change a model build their own with `fresh_model`)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sevila import prompts
from sevila.model import SeViLA, sevila_tiny
from sevila.tokenizer import build_tiny_tokenizer

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("square", "circle", "triangle", "star")

#: Questions of the tests: 5-, 4- and 2-option ones (NExT-QA-, STAR- and VLEP-like).
QUESTIONS = [
    ("what colour is the square when it stops?", ["red", "green", "blue", "yellow", "purple"]),
    ("which shape moves to the left first?", ["square", "circle", "triangle", "star"]),
    (None, ["the red star will turn left.", "the blue circle will stop."]),
]


def _corpus() -> list[str]:
    texts = [f"a {c} {s} moves to the left and stops" for c in COLOURS for s in SHAPES]
    for q, options in QUESTIONS:
        texts += list(prompts.qa_prompts(q, options))
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(_corpus(), tmp_path_factory.mktemp("tok") / "tiny", vocab_size=256)


def make_model(tokenizer, seed: int = 0, **overrides) -> SeViLA:
    torch.manual_seed(seed)
    config = dataclasses.replace(sevila_tiny(len(tokenizer)), **overrides)
    return SeViLA(config, tokenizer)


@pytest.fixture(scope="session")
def model_factory(tiny_tokenizer):
    """`model_factory(seed=0, **config_overrides)` -> a new tiny SeViLA on the session tokenizer."""
    return lambda seed=0, **overrides: make_model(tiny_tokenizer, seed, **overrides)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> SeViLA:
    return make_model(tiny_tokenizer)


@pytest.fixture
def fresh_model(tiny_tokenizer) -> SeViLA:
    return make_model(tiny_tokenizer, seed=1)


@pytest.fixture(scope="session")
def batch(tiny_model):
    """3 questions x 6 frames of ViT features [3, 6, 17, 64] with their prompts."""
    torch.manual_seed(123)
    pixels = torch.randn(3 * 6, 3, 32, 32)
    features = tiny_model.encode_frames(pixels).view(3, 6, *tiny_model.encode_frames(pixels[:1]).shape[1:])
    qa, loc = zip(*(prompts.qa_prompts(q, o) for q, o in QUESTIONS))
    return {
        "pixels": pixels,
        "features": features,
        "qa": list(qa),
        "loc": list(loc),
        "n_options": [len(o) for _, o in QUESTIONS],
        "questions": QUESTIONS,
    }
