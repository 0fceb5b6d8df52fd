from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu); none is visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _mid_gap(conf: torch.Tensor) -> torch.Tensor:
    """A threshold near the median but in the widest gap between the middle confidences, so
    folding BatchNorm (outputs equal up to ~1e-6) cannot move a sample across it."""
    c = conf.sort().values
    n = len(c)
    lo, hi = n // 4, 3 * n // 4
    i = lo + int((c[lo + 1 : hi + 1] - c[lo:hi]).argmax())
    return (c[i] + c[i + 1]) / 2


@pytest.fixture
def mid_gap():  # type: ignore[no-untyped-def]
    """``mid_gap(confidences)``: a threshold about half the samples pass, safe from rounding."""
    return _mid_gap


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # The tensors in the tests are tiny, and with two threads every op waits at an OpenMP
    # barrier for a thread that another process on the same two cores may hold: measured
    # 20 ms instead of 0.07 ms per 8-channel conv.
    torch.set_num_threads(1)


def _write_tiny_export(folder):  # type: ignore[no-untyped-def]
    """A tiny export (random weights, no ONNX) written by the package's own writer; its folder."""
    from exitnas.results import write_export
    from exitnas.search_space import ArchConfig, Supernet, build_space

    space = build_space("msr-resnet", in_channels=1, num_classes=10, channels=(8, 16), depths=(1, 2),
                        widths=(0.5, 1.0), ratios=(0.0, 1.0), heads=("linear",))
    arch = ArchConfig("msr-resnet", (1, 1), (1.0, 1.0), ((0.0,), (1.0,)), ((0, 0), (1, 0)), ("linear", "linear"))
    net = Supernet(space).to_static(arch)
    metrics = {s: {"accuracy": 0.5, "expected_mmacs": 0.1} for s in ("val", "test")}
    meta = {"arch": arch.to_dict(), "thresholds": [0.9], "confidence": "maxprob", "space": space.to_dict(),
            "metrics": metrics}
    write_export(folder, net, meta, [0.5], [0.25], (1, 8, 8), onnx=False)
    return folder


@pytest.fixture(scope="session")
def tiny_export():  # type: ignore[no-untyped-def]
    """``tiny_export(folder)``: write a tiny export (random weights, no ONNX) there; its folder."""
    return _write_tiny_export
