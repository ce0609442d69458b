"""The same loop under torchrun with DDP (gloo on CPU): 2 processes, each taking half of every global batch,
compute the same updates as 1 process with the same global batch; only rank 0 writes checkpoints and logs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sevila.weights.checkpoint_dir import load_state_file, load_tensors

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _jsonl_log import read_metrics  # noqa: E402
REPO = HERE.parents[1]
WORKER = HERE / "_train_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env |= {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.timeout(180)
def test_two_process_ddp_matches_one_process(tmp_path):
    # global batch 8: 1 process does 4 micro-steps of 2; with 2 processes each does 2 micro-steps of 2
    # (so no_sync accumulation is exercised too). No dropout: ranks draw different masks by design.
    common = ["--epochs", "2", "--batch", "8", "--micro", "2", "--dropout", "0", "--eval-every", "4",
              "--checkpoint-every", "5"]
    one, two = tmp_path / "one", tmp_path / "two"
    ddp = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "--master_addr=127.0.0.1", str(WORKER), "--out", str(two), "--result", str(two / "result.json"), *common],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = subprocess.run([sys.executable, str(WORKER), "--out", str(one), "--result", str(one / "result.json"),
                             *common], env=_env(), capture_output=True, text=True, timeout=120)
    out, _ = ddp.communicate(timeout=150)
    assert single.returncode == 0, single.stdout + single.stderr
    assert ddp.returncode == 0, out

    w1 = load_tensors(one / "last")
    w2 = load_tensors(two / "last")
    assert sorted(w1) == sorted(w2)
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-6), (k, (w1[k] - w2[k]).abs().max())
    s1, s2 = load_state_file(one / "last" / "state.pt"), load_state_file(two / "last" / "state.pt")
    assert (s1["step"], s2["step"]) == (12, 12) and (s1["world_size"], s2["world_size"]) == (1, 2)
    assert len(s2["rng"]) == 2  # each rank's RNG state is kept, so a DDP run resumes exactly too
    assert not torch.equal(s2["rng"][0]["torch"], s2["rng"][1]["torch"])  # ranks were seeded apart

    h1 = json.loads((one / "result.json").read_text())["history"]
    h2 = json.loads((two / "result.json").read_text())["history"]
    assert [sorted(h) for h in h1] == [sorted(h) for h in h2]
    for a, b in zip(h1, h2, strict=True):
        assert a["step"] == b["step"]
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
    # only rank 0 logged and wrote files
    assert (two / "metrics.rank0.jsonl").exists() and not (two / "metrics.rank1.jsonl").exists()
    assert sorted(p.name for p in two.iterdir()) == ["best", "last", "metrics.rank0.jsonl", "result.json"]
    assert list(read_metrics(two / "metrics.rank0.jsonl")) == list(range(1, 13))
