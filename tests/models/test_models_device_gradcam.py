"""Per-device fast path helpers, Grad-CAM options, and the benchmark script end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distmsfa.models import autocast, create_model, default_precision, gradcam, prepare_for_device, prepare_input

REPO = Path(__file__).resolve().parents[2]


def test_cpu_default_is_fp32_contiguous():
    assert default_precision("cpu") is None
    m = prepare_for_device(create_model("msfanet", preset="tiny"), "cpu")
    x = prepare_input(torch.rand(1, 2, 8, 32, 48), "cpu")
    assert x.is_contiguous()
    with autocast("cpu"):
        out = m(x)
    assert out["fuse"].dtype == torch.float32


def test_bf16_autocast_forward_and_loss_on_cpu():
    m = create_model("msfanet", preset="tiny", alpha_init=0.5)
    with autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.rand(2, 2, 8, 32, 48))
    loss, logs = m.loss(out, torch.tensor([0.0, 1.0]))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_gradcam_head_and_branch_selection():
    torch.manual_seed(0)
    m = create_model("centralnet", preset="tiny")  # its T1 layer feeds both the t1 and fuse heads
    x = torch.rand(2, 8, 32, 48)
    only = gradcam(m, x, branches=["fuse"])
    assert set(only) == {"fuse"}
    per_head = gradcam(m, x, branches=["t1"])["t1"]  # explains the t1 head by default
    via_fuse = gradcam(m, x, branches=["t1"], head="fuse")["t1"]
    assert per_head.shape == via_fuse.shape == (8, 32, 48)
    assert not np.allclose(per_head, via_fuse)
    batch = gradcam(m, torch.rand(3, 2, 8, 32, 48), branches=["fs"])["fs"]
    assert batch.shape == (3, 8, 32, 48)
    with pytest.raises(KeyError, match="no Grad-CAM layer"):
        gradcam(m, x, branches=["shallow"])
    msfanet = create_model("msfanet", preset="tiny")
    with pytest.raises(ValueError, match="does not influence"):
        gradcam(msfanet, x, branches=["t1"], head="fuse")  # branch2.t1 feeds only the t1 head
    with pytest.raises(ValueError, match="expects"):
        gradcam(m, torch.rand(1, 8, 32, 48))


def test_gradcam_splits_a_shared_backbone_per_sequence():
    torch.manual_seed(0)
    m = create_model("bressem", preset="tiny")
    x = torch.rand(2, 8, 32, 48)
    x[1] = 0  # FS empty: its map must differ from T1's
    maps = gradcam(m, x)
    assert set(maps) == {"t1", "fs"}
    assert not np.allclose(maps["t1"], maps["fs"])


@pytest.mark.slow
def test_benchmark_script_writes_json(tmp_path):
    out = tmp_path / "b.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_models.py"), "--device", "cpu", "--preset", "tiny",
                    "--models", "msfanet", "--reference", "--modes", "fp32/ncdhw", "--iters", "1", "--warmup", "0",
                    "--threads", "1", "--set", "msfanet@h2:attn_heads=2", "--out", str(out)],
                   check=True, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["complete"] and {r["model"] for r in report["results"]} == {"reference", "msfanet", "msfanet@h2"}
    for r in report["results"]:
        assert r["samples_per_s"] > 0 and r["peak_mem_mib"] >= 0, r
    assert "msfanet" in report["ratio_to_reference"]
