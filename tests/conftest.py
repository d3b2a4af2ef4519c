"""Shared fixtures: small synthetic datasets written by the library itself, and one tiny trained run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetzoo.config import Config
from unetzoo.data.phantoms import write_organs_phantom

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_SHAPE = (24, 28, 20)


def tiny_config(model: str = "unet", epochs: int = 1) -> Config:
    """A configuration that trains in seconds on CPU (patch 16^3, 3 iterations, no workers)."""
    config = Config(model=model)
    config.data.patch_size = [16, 16, 16]
    config.data.num_workers = 0
    config.data.cache_workers = 0
    config.train.epochs = epochs
    config.train.iters_per_epoch = 3
    config.train.lr = 1e-3
    return config


def assert_eval_map(net: torch.nn.Module, x: torch.Tensor, out_channels: int) -> None:
    """The model contract in eval mode: one finite map with the input's batch and spatial size."""
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert y.shape == (x.shape[0], out_channels, *x.shape[2:]) and torch.isfinite(y).all()


def assert_gradients(net: torch.nn.Module) -> None:
    """After a backward pass: every trainable parameter took part in the loss and has a finite gradient."""
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter takes part in the training loss"
    assert all(torch.isfinite(g).all() for g in grads)


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``unetzoo`` command in a fresh interpreter; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "unetzoo.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session", autouse=True)
def preprocessing_cache(tmp_path_factory) -> Path:
    """Every training in the tests (subprocesses included) caches its preprocessed cases here, not in ~/.cache."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["UNETZOO_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def organs(tmp_path_factory) -> Path:
    """Six 3D phantom cases (nnU-Net layout, anisotropic spacing, rotated affine)."""
    return write_organs_phantom(tmp_path_factory.mktemp("organs"), cases=6, seed=1, shape=TINY_SHAPE)


@pytest.fixture(scope="session")
def trained_run(organs, tmp_path_factory) -> Path:
    """A unet run trained for one tiny epoch on the phantom (fold 0 of 5)."""
    from unetzoo.training.run import train

    return train(organs, tmp_path_factory.mktemp("run") / "unet", tiny_config())
