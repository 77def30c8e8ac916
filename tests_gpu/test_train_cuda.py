"""The training loop on CUDA: bf16 autocast and channels_last in effect, exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from sweeper.training.config import TrainConfig
from sweeper.training.data import SplitData
from sweeper.training.loop import TrainState, prepare, resolved, train

# bf16 rounding, and cuDNN's autotuned kernels that sum in no fixed order, let a resumed epoch
# drift a little from the unbroken one: losses by under 2%, accuracies by under 15 of 1,000.
LOSS_TOLERANCE = 0.02
ACCURACY_TOLERANCE = 0.015


def _forward(
    config: TrainConfig, data: SplitData
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model of a run as prepare() builds it, a training batch, and its logits under the
    autocast that train() makes from the config."""
    device = torch.device("cuda")
    state, train_split, _ = prepare(config, data, device)
    x, _ = next(train_split.batches(64, state.generator, augment=True))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=config.bf16):
        logits = state.model(x)
    return state.model, x, logits


@pytest.mark.parametrize("model", ["cnn2", "resnet20", "vgg16", "resnet9"])
def test_bf16_and_channels_last_are_in_effect_on_cuda(small_cifar: SplitData, model: str) -> None:
    config = resolved(TrainConfig(model=model, device="cuda"))  # the defaults, decided as train()
    assert config.bf16 and config.channels_last
    net, x, logits = _forward(config, small_cifar)
    assert logits.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    kernels = [p for p in net.parameters() if p.dim() == 4]
    assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    assert not all(p.is_contiguous() for p in kernels)  # converted, not both layouts at once
    assert torch.backends.cudnn.benchmark


def test_fp32_and_contiguous_when_turned_off(small_cifar: SplitData) -> None:
    config = TrainConfig(model="resnet20", device="cuda", bf16=False, channels_last=False)
    net, x, logits = _forward(config, small_cifar)
    assert logits.dtype == torch.float32
    assert x.is_contiguous()
    assert all(p.is_contiguous() for p in net.parameters())


def test_resume_on_cuda_matches_an_unbroken_run(small_cifar: SplitData) -> None:
    """Two epochs straight against one epoch, a checkpoint, and the second epoch resumed."""
    config = TrainConfig(model="resnet20", device="cuda", batch_size=128, epochs=2, lr=0.05,
                         schedule="cosine")  # fmt: skip
    saved = io.BytesIO()

    def save_first(metrics: dict, state: TrainState) -> bool:
        if metrics["epoch"] == 1:
            torch.save(state.state_dict(), saved)
        return False

    unbroken = train(config, small_cifar, callback=save_first)
    saved.seek(0)
    resumed = train(config, small_cifar, resume=torch.load(saved, weights_only=True))
    assert unbroken.status == resumed.status == "completed"
    assert resumed.history[0] == unbroken.history[0]  # the checkpoint's own epoch
    got, want = resumed.history[1], unbroken.history[1]
    assert got["epoch"] == want["epoch"] == 2
    assert got["lr"] == want["lr"]
    for key in ("train_loss", "val_loss"):
        assert math.isclose(got[key], want[key], rel_tol=LOSS_TOLERANCE), (key, got, want)
    for key in ("train_acc", "val_acc"):
        assert abs(got[key] - want[key]) <= ACCURACY_TOLERANCE, (key, got, want)
