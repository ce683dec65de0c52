"""``compress`` under torchrun: 2 CPU processes (gloo), DistributedDataParallel, ranks agree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with the gloo backend is not available")  # fmt: skip
def test_torchrun_two_processes_agree(tmp_path):
    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cepd_deploy", "compress", "--arch", "resnet20", "--data", "digits",
           "--flops-remaining", "0.5", "--epochs-baseline", "1", "--epochs-admm", "1",
           "--epochs-finetune", "1", "--train-limit", "64", "--test-limit", "32", "--batch-size", "16",
           "--project-every", "1", "--threads", "1", "--no-progress", "--json", "-o", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{") :])  # only rank 0 prints
    assert result["world_size"] == 2 and out.is_file()
    records = [json.loads(x) for x in out.with_suffix(".log.jsonl").read_text().splitlines()]
    syncs = {r["phase"]: r["digests"] for r in records if r.get("event") == "sync"}
    assert set(syncs) == {"baseline", "admm", "finetune"}
    for digests in syncs.values():  # weights, BN statistics and ADMM state, bit for bit
        assert len(digests) == 2 and digests[0] == digests[1]
    # 64 images, 2 ranks, batch 16: each rank takes 2 steps per epoch (not 4), 32 images each
    epochs = [r for r in records if "epoch" in r]
    assert len(epochs) == 3 and all(r["steps"] == 2 for r in epochs)
