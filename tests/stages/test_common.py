"""The training items' digest in the resume key (sevila.stages.common.content_digest): equal content, equal digest; any
change a run would read (a label, a prompt, a feature value or shape) changes it."""
import numpy as np
import pytest
import torch

from sevila.stages.common import SAMPLE_ABOVE, content_digest


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
