"""``--device auto`` (the default): CUDA when present, else the CPU, and the log says which."""

from __future__ import annotations

import pytest
import torch

from unetzoo.config import Config
from unetzoo.device import device_line, resolve_device
from unetzoo.errors import UnetzooError


def test_auto_is_the_default_and_resolves_to_cuda_only_when_present(monkeypatch):
    assert Config().train.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert device_line("auto") == "device auto: cpu (no CUDA device)"
    assert device_line("cpu") == "device cpu"
    with pytest.raises(UnetzooError, match="--device cuda requested but no CUDA device is available"):
        resolve_device("cuda")
    with pytest.raises(UnetzooError, match=r"unknown device 'tpu' \(auto, cpu, cuda\)"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    assert resolve_device("auto") == torch.device("cuda")
    assert device_line("auto") == "device auto: cuda (Fake GPU)"
