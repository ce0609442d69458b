"""The stages' shared plumbing (sevila.stages.common): the training items' digest in the resume key (equal content,
equal digest; any change a run would read - a label, a prompt, a feature value or shape - changes it), and a split
too small to train on stopping with one line that says what to set."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sevila.stages.common import SAMPLE_ABOVE, content_digest

REPO = Path(__file__).resolve().parents[2]


def items(features: torch.Tensor, label: bool = True, prompt: str = "is it a red square?") -> list[dict]:
    return [{"features": features, "prompt": prompt, "labels": torch.tensor([label, False]),
             "timestamps": np.array([0.5, 1.5]), "windows": ((0.0, 1.0),), "n": 2}] * 2


def test_equal_content_equal_digest_and_every_read_value_counts():
    f = torch.arange(24.0).reshape(2, 3, 4)
    base = content_digest(items(f))
    assert content_digest(items(f.clone())) == base  # content, not identity
    assert content_digest(items(f, label=False)) != base
    assert content_digest(items(f, prompt="is it blue?")) != base
    assert content_digest(items(f + 1e-3)) != base
    assert content_digest(items(f.reshape(3, 2, 4))) != base  # same values, other frames x tokens


def test_large_tensors_are_fingerprinted_and_unknown_types_refused():
    big = torch.randn(SAMPLE_ABOVE + 1, generator=torch.Generator().manual_seed(0))
    changed = big.clone()
    changed[1] += 1.0  # off the strided sample: the sum still tells
    assert content_digest([big]) != content_digest([changed])
    assert content_digest([big]) == content_digest([big.clone()])
    with pytest.raises(TypeError, match="cannot digest a object"):
        content_digest([object()])


def test_a_split_smaller_than_one_batch_says_what_to_set(tmp_path):
    # issue 24: 8 QVHighlights queries under batch 64 ended in a traceback (InvalidSetting: eval_every=0)
    from sevila.config import TrainConfig, load_config
    from sevila.errors import BadArgument
    from sevila.stages.common import fit_module

    cfg = load_config(REPO / "params.yaml", [f"paths.runs={tmp_path}"])
    with pytest.raises(BadArgument, match=r"^pretrain_localizer: 8 training examples, fewer than one batch of 64: "
                                          r"lower pretrain_localizer.train.batch_size \(and micro_batch\) to at most 8"):
        fit_module(cfg, None, "localizer", list(range(8)), None, "pretrain_localizer",
                   TrainConfig(batch_size=64, micro_batch=8), tmp_path / "out", eval_fn=lambda m: {})
    assert not (tmp_path / "out").exists() and not (tmp_path / "train").exists()
