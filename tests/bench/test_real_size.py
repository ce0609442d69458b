"""bench/real_size.py: the real-size architecture at reduced depth on a CPU (subprocess smoke run), the exactness of
its per-layer FLOP extrapolation, and its setting checks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.real_size import CPU_DEPTH, FULL, Depth, bench_prompts, count, parse
from sevila.model.tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[2]

# Closed-form parameter counts of one layer of each stack at the real widths (sevila_flant5xl()).
VIT_LAYER = 4 * 1408**2 + 2 * 1408 * 6144 + 9 * 1408 + 6144  # qkv+proj, fc1+fc2; qkv/proj/fc2 biases, 2 LayerNorms
T5_ENC_LAYER = 4 * 2048**2 + 3 * 2048 * 5120 + 2 * 2048  # q,k,v,o; gated FFN wi_0, wi_1, wo; 2 RMS norms
T5_DEC_LAYER = 8 * 2048**2 + 3 * 2048 * 5120 + 3 * 2048  # + cross-attention and its norm
QF_SELF_LAYER = (4 * 768**2 + 6 * 768) + (768 * 3072 + 3072) + (3072 * 768 + 3 * 768)  # attention, query FFN
QF_CROSS = 2 * 768**2 + 2 * 1408 * 768 + 6 * 768  # cross-attention to the ViT (width 1408) every 2nd layer
FULL_PARAMETERS = 4_049_186_560  # SeViLA with ViT-g, two Q-Formers and Flan-T5-XL


def smoke_parameters() -> int:
    """The full model minus the layers the smoke depth (ViT 1, Q-Former 2, T5 1 + 1) leaves out."""
    d = CPU_DEPTH
    qformer_pair = 2 * QF_SELF_LAYER + QF_CROSS
    return (FULL_PARAMETERS - (FULL.vit - d.vit) * VIT_LAYER - (FULL.t5_encoder - d.t5_encoder) * T5_ENC_LAYER
            - (FULL.t5_decoder - d.t5_decoder) * T5_DEC_LAYER - 2 * (FULL.qformer - d.qformer) // 2 * qformer_pair)


def test_tiny_smoke_on_cpu_writes_consistent_reduced_depth_figures(tmp_path):
    out = tmp_path / "real_size.json"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "real_size.py"), "--tiny-smoke", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REDUCED DEPTH" in proc.stdout and "ESTIMATE" in proc.stdout
    r = json.loads(out.read_text())

    assert r["device"] == "cpu" and r["reduced_depth"] is True and r["precision"] == "fp32"
    assert r["layers"] == {"vit": 1, "qformer": 2, "t5_encoder": 1, "t5_decoder": 1}
    assert r["full_layers"] == {"vit": 39, "qformer": 12, "t5_encoder": 24, "t5_decoder": 24}
    assert r["parameters_full_depth"] == FULL_PARAMETERS
    assert r["parameters"] == smoke_parameters() == 309_554_688
    assert r["weight_bytes"] == 4 * r["parameters"] and r["weight_bytes_full_depth"] == 4 * FULL_PARAMETERS
    # the Answerer's bridge: ln_vision, Q-Former (LayerNorm + one self and one cross layer), 32 queries, projection
    assert r["trainable_answerer_parameters"] == 2 * 1408 + 2 * 768 + 2 * QF_SELF_LAYER + QF_CROSS + 32 * 768 \
        + 768 * 2048 + 2048
    s = r["setup"]
    assert (s["frames"], s["keyframes"], s["questions_per_batch"], s["micro_batch"]) == (2, 1, 1, 1)
    assert s["vocab_size"] == 32128 and s["tokenizer_size"] < s["vocab_size"] and s["prompt_tokens"] == 77

    peak = r["peak_flops_per_second"]
    assert peak > 0 and "GEMM" in r["peak_flops_is"]
    m, est = r["measured"], r["full_depth_estimate"]
    for f in (m, est):
        sec, fl = f["seconds"], f["flops"]
        assert min(sec.values()) > 0 and min(fl.values()) > 0
        with_vit = s["frames"] * sec["vit_per_frame"] + sec["chain_batch"]
        assert f["questions_per_second_cached_features"] == pytest.approx(1 / sec["chain_batch"])
        assert f["questions_per_second_with_vit"] == pytest.approx(1 / with_vit)
        assert f["mfu"]["chain_cached_features"] == pytest.approx(fl["chain_batch"] / sec["chain_batch"] / peak)
        assert f["mfu"]["finetune_step"] == pytest.approx(fl["finetune_step"] / sec["finetune_step"] / peak)
        assert f["mfu"]["chain_with_vit"] == pytest.approx(
            (fl["chain_batch"] + s["frames"] * fl["vit_per_frame"]) / with_vit / peak)
    # the estimate scales each time by the counted FLOP ratio (the same rate at full depth)
    for k in ("vit_per_frame", "chain_batch", "finetune_step"):
        assert est["flops"][k] > m["flops"][k]
        assert est["seconds"][k] / m["seconds"][k] == pytest.approx(est["flops"][k] / m["flops"][k])
    mem = m["finetune_step_memory_bytes"]
    assert mem["peak"] >= mem["before"] > r["weight_bytes"]
    extra_weights = r["weight_bytes_full_depth"] - r["weight_bytes"]
    assert est["finetune_step_peak_memory_bytes"] > mem["peak"] + extra_weights
    assert "ESTIMATE" in est["how"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer([], tmp_path_factory.mktemp("tok") / "t", vocab_size=256)


def test_flops_and_saved_bytes_extrapolate_exactly_per_layer(tok):
    """Counted once at COUNT_DEPTH, every figure extrapolates to a deeper model exactly as a direct count there."""
    qa, loc = bench_prompts(tok, 1, 77)
    base = count(tok, False, 2, 1, qa, loc, 1)
    other = Depth(vit=3, qformer=6, t5_encoder=3, t5_decoder=4)
    direct = count(tok, False, 2, 1, qa, loc, 1, depth=other)
    for name in ("vit_per_frame", "chain", "step", "step_saved_bytes"):
        assert getattr(base, name).at(other) == getattr(direct, name).total, name
    # one ViT-g layer on one frame: 257 tokens through qkv/proj/fc1/fc2, plus QK^T and AV (2 FLOPs per multiply-add)
    assert base.vit_per_frame.per_layer["vit"] == 2 * 257 * (4 * 1408**2 + 2 * 1408 * 6144) + 2 * 2 * 257**2 * 1408
    assert base.chain.per_layer["vit"] == 0 and min(base.chain.per_layer[s] for s in
                                                    ("qformer", "t5_encoder", "t5_decoder")) > 0
    assert base.step_saved_bytes.per_layer["t5_encoder"] > 0
    with pytest.raises(ValueError, match="deeper models only"):
        base.chain.at(Depth(vit=1, qformer=2, t5_encoder=1, t5_decoder=1))


@pytest.mark.parametrize("argv, message", [
    (["--qformer-layers", "3"], "--qformer-layers must be even"),
    (["--keyframes", "5", "--frames", "4"], "--keyframes 5 is more than --frames 4"),
    (["--t5-layers", "25"], "t5_encoder layers must be in 1..24"),
    (["--micro-batch", "0"], "--micro-batch must be >= 1"),
])
def test_bad_settings_stop_before_anything_runs(argv, message, capsys, tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exc:
        parse(["--device", "cpu", "--out", str(out), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
