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


def test_frozen_weights_are_known_by_content_even_with_size_and_mtime_kept(tmp_path):
    # issue 24: the resume key named frozen weights by path, size and mtime, so a T5 swapped inside
    # model.safetensors with both kept (cp -p, rsync -a, tar x) resumed a Localizer trained against the old one
    import os

    from sevila.stages.common import weights_identity

    weights, cache = tmp_path / "blip2", tmp_path / "runs" / "digests.json"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    t5 = weights / "model.safetensors"
    t5.write_bytes(b"old T5 weights.")
    first = weights_identity(weights, cache)
    assert [name for name, _, _ in first] == ["config.json", "model.safetensors"] and cache.is_file()
    assert weights_identity(weights, cache) == first  # unchanged: the cached digests
    stat = t5.stat()
    t5.write_bytes(b"new T5 weights.")  # same size
    os.utime(t5, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime, as cp -p would leave it
    assert t5.stat().st_size == stat.st_size and t5.stat().st_mtime_ns == stat.st_mtime_ns
    second = weights_identity(weights, cache)
    assert second[0] == first[0] and second[1][:2] == first[1][:2] and second[1][2] != first[1][2]
