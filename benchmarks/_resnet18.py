"""The reference network of ``benchmarks/headline.py``: a standard ResNet-18, and its ``resnet18`` step.

The step trains it on the same data, augmentation and optimiser as the supernet for the same
wall time (``--resnet-minutes``), in checkpointed chunks. :func:`train_steps` and
:func:`steps_per_s` are the plain training loop and its speed probe, which the ``retrain``
step also uses to size the retraining of an exported arch.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _headline_harness import Run, sync
from torch import nn

from exitnas._io import atomic_write


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3×3 convs, a 1×1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv1(x)).relu()
        y = self.bn2(self.conv2(y))
        return (y + self.downsample(x)).relu()


class ResNet18(nn.Module):
    """ResNet-18 for 32×32 images: torchvision's layout with a 3×3 stride-1 stem and no max-pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def amp(device: torch.device) -> Any:
    """bf16 autocast on a GPU (as exitnas trains there); nothing on a CPU."""
    return torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def train_steps(model: nn.Module, loss_of: Callable[[Any, torch.Tensor], torch.Tensor], loader: Any,
                 opt: torch.optim.Optimizer, lr: Callable[[int], float], start: int, stop: int,
                 channels_last: bool) -> float:
    """Optimiser steps ``start``..``stop`` (the loader's batches are a function of the step alone)."""
    spe, step, last = len(loader), start, float("nan")
    model.train()
    while step < stop:
        for x, y in loader.epoch(step // spe, step % spe):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = lr(step)
            with amp(x.device):
                loss = loss_of(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= stop:
                break
        last = float(loss.detach())
    return last


def steps_per_s(make: Callable[[], tuple[nn.Module, Callable[..., torch.Tensor], bool]], run: Run,
                 splits: Any) -> float:
    """Steady-state optimiser steps per second of a freshly built model (warm-up, then timed)."""
    from exitnas.training import make_optimizer, train_loader

    model, loss_of, cl = make()
    tc = run.cfg().train
    loader = train_loader(tc, splits, run.device, run.s.seed)
    opt = make_optimizer(model, tc, 1e-4)
    warm, timed = (1, 2) if run.s.smoke else (5, 30)
    train_steps(model, loss_of, loader, opt, lambda s: 1e-4, 0, warm, cl)
    sync(run.device)
    t = time.perf_counter()
    train_steps(model, loss_of, loader, opt, lambda s: 1e-4, warm, warm + timed, cl)
    sync(run.device)
    return timed / (time.perf_counter() - t)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, splits: Any, device: torch.device) -> float:
    from exitnas.data import normalize

    model.eval()
    right = 0
    for i in range(0, len(x), 1000):
        xb = normalize(x[i : i + 1000].to(device), splits.mean, splits.std)
        with amp(device):
            right += int((model(xb).argmax(-1) == y[i : i + 1000].to(device)).sum())
    return right / len(x)


def _save_torch(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda p: torch.save(state, p))


def step_resnet18(run: Run) -> bool:
    from exitnas.evaluators import count_macs
    from exitnas.training import lr_at, make_optimizer, train_loader

    log = run.log("resnet18")
    if log is None:
        return True
    splits = run.splits()
    tc = run.cfg().train
    dev, cl = run.device, run.device.type == "cuda"
    spe = len(splits.train_y) // tc.batch_size

    def build() -> tuple[nn.Module, Callable[..., torch.Tensor], bool]:
        torch.manual_seed(run.s.seed)
        m = ResNet18(splits.num_classes, splits.in_channels).to(dev)
        m = m.to(memory_format=torch.channels_last) if cl else m
        return m, lambda z, y: nn.functional.cross_entropy(z.float(), y, label_smoothing=tc.label_smoothing), cl

    if "epochs" not in log.data:
        sps = steps_per_s(build, run, splits)
        epochs = run.s.resnet_minutes * 60 * sps / spe
        if run.s.max_epochs is not None:
            epochs = min(epochs, run.s.max_epochs)
        mmacs = count_macs(ResNet18(splits.num_classes, splits.in_channels).eval(),
                           torch.zeros(1, *splits.train_x.shape[1:])) / 1e6
        log.save(epochs=epochs, total_steps=max(1, round(epochs * spe)), steps_per_s_measured=sps, mmacs=mmacs,
                 budget_minutes=run.s.resnet_minutes, batch_size=tc.batch_size, lr=tc.lr,
                 model="ResNet-18, torchvision layout, 3x3 stride-1 stem, no max-pool")
        print(f"[resnet18] {mmacs:.1f} MMACs; measured {sps:.2f} steps/s → {epochs:.2f} epochs")
    total, sps = log.data["total_steps"], log.data["steps_per_s_measured"]
    model, loss_of, _ = build()
    opt = make_optimizer(model, tc, tc.lr)
    ckpt = run.out / "resnet18" / "checkpoint.pt"
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = int(state["step"])
    loader = train_loader(tc, splits, dev, run.s.seed)
    warmup = min(total, round(tc.warmup_epochs * spe))
    chunk = max(1, round(60 * sps))
    while step < total:
        room = int((run.left() - 15) * sps)
        if room < 1:
            return False
        stop = min(total, step + chunk, step + room)
        loss = train_steps(model, loss_of, loader, opt, lambda s: lr_at(s, total, warmup, tc.lr), step, stop, cl)
        step = stop
        _save_torch(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step})
        log.save(steps_done=step, last_loss=loss)
        print(f"  step {step}/{total}: loss {loss:.3f}", flush=True)
    acc = _accuracy(model, splits.test_x, splits.test_y, splits, dev)
    shutil.rmtree(ckpt.parent, ignore_errors=True)  # 90 MB; the figures are in resnet18.json
    print(f"  ResNet-18 test accuracy {acc:.4f}")
    log.finish(steps_done=step, test_accuracy=acc)
    return True
