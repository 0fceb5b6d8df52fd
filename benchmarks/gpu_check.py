"""Every CLI path on one device, as a user runs it: the GPU-path check of issue 14, in one command.

Each check runs ``python -m exitnas ...`` in a subprocess on the built-in digits data with tiny
budgets (the point is that every path runs on the device, not what it learns) and records
PASS or FAIL with the last lines of its output. Then the gpu-marked tests (when pytest is
installed) and the supernet's training speed at three batch sizes. Everything goes to
``--out`` (``gpu_check.json`` and a log per check), so a device run brings it back through
``$OUT``. On the GPU machine (see benchmarks/README.md; stage the wheels with
``../shared/tools/device-pack`` and carry ``.device``; the device's image has pytest):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl \\
      && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \\
      && python3 benchmarks/gpu_check.py --device cuda --out /tmp/gc; cp /tmp/gc/gpu_check.json $OUT/

On a CPU (``--device cpu``) it checks itself: every path must pass there too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.name=digits", "--set", "data.val_size=0.2", "--set", "space.channels=[8,16]",
        "--set", "space.depths=[1,2]", "--set", "train.batch_size=64", "--set", "train.epochs=1",
        "--set", "train.progress=false", "--set", "search.progress=false", "--set", "search.recal_images=256"]
#: Space options that change what the supernet computes: each needs its own supernet.
SPACES = {"plain": [], "heads": ["--set", "space.heads=[linear,msdnet,bof]"],
          "boost": ["--set", "space.combine=boost"], "ztw": ["--set", "space.combine=ztw"],
          "gate": ["--set", "space.gate=emg"], "ensemble": ["--set", "space.ensemble=geometric"],
          "dfs": ["--set", "train.routing=dfs"]}


@dataclass
class Check:
    name: str
    ok: bool
    seconds: float
    tail: str


TINY_OVERRIDES = [TINY[i + 1] for i in range(0, len(TINY), 2)]
#: An interrupted run (stopped at step 3) resumed to the end must equal the run never stopped.
RESUME = """
import torch
from exitnas._config import load_config
from exitnas.training import load_checkpoint, train_supernet
over, out, device = %r, %r, %r
base = over + [f"train.device={device}", "train.epochs=0.3"]
train_supernet(load_config(None, base + [f"train.out={out}-a"]))
cfg = load_config(None, base + [f"train.out={out}-b"])
train_supernet(cfg, stop_at_step=3)
train_supernet(cfg, resume=True)
a, b = (load_checkpoint(f"{out}-{k}/supernet.pt")["model"] for k in "ab")
worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
print("largest difference, resumed against never stopped:", worst)
assert worst <= (1e-5 if device == "cuda" else 0.0), worst
"""


class Runner:
    """Runs CLI commands on one device and keeps their verdicts."""

    def __init__(self, device: str, out: Path) -> None:
        self.device, self.out, self.checks = device, out, []  # type: ignore[var-annotated]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def cli(self, name: str, *args: str, timeout: float = 300) -> bool:
        return self._record(name, [sys.executable, "-m", "exitnas", *args], timeout)

    def _record(self, name: str, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> bool:
        t0 = time.perf_counter()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**self.env, **(env or {})},
                               cwd=self.out)
            ok, text = p.returncode == 0, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            ok, text = False, f"timed out after {timeout} s\n{e.stdout or ''}{e.stderr or ''}"
        (self.out / "logs").mkdir(exist_ok=True)
        (self.out / "logs" / f"{name}.log").write_text(text)
        self.checks.append(Check(name, ok, time.perf_counter() - t0, "\n".join(text.strip().splitlines()[-6:])))
        print(f"{'PASS' if ok else 'FAIL'} {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return ok

    def python(self, name: str, code: str, timeout: float = 300, env: dict[str, str] | None = None) -> bool:
        return self._record(name, [sys.executable, "-c", code], timeout, env)

    def train(self, space: str) -> str:
        out = str(self.out / f"sn-{space}")
        self.cli(f"train-{space}", "train", *TINY, *SPACES[space], "--set", f"train.out={out}",
                 "--set", f"train.device={self.device}")
        return out

    def search(self, name: str, sn: str, *more: str) -> str:
        url = f"sqlite:///{self.out / f'{name}.db'}"
        self.cli(f"search-{name}", "search", "--checkpoint", f"{sn}/supernet.pt", "--storage", url, "--study", name,
                 "--trials", "6", *more)
        return url


def run_paths(r: Runner) -> None:
    """Train (and resume) → search (every sampler, space option, exit rule) → evaluate → report →
    export (loaded back on the CPU) → retrain → profile."""
    dev = ["--set", f"train.device={r.device}"]
    plain = r.train("plain")
    r.python("train-stop-and-resume", RESUME % (TINY_OVERRIDES, str(r.out / "sn-resumed"), r.device))
    for sampler in ("nsga2", "tpe", "gp", "random"):
        r.search(f"sampler-{sampler}", plain, "--sampler", sampler, *dev)
    for space in ("heads", "boost", "ztw", "gate", "ensemble", "dfs"):
        r.search(f"space-{space}", r.train(space), "--sampler", "random", *dev)
    r.search("rule-bof", plain, "--set", "search.exit_rule=bof", *dev)
    url = r.search("conf-entropy", plain, "--set", "search.confidence=entropy", *dev)
    r.cli("evaluate", "evaluate", "--storage", url, "--arch", "largest", "--thresholds", "0.5,0.6,0.7",
          "--out", str(r.out / "evaluate.json"))
    r.cli("report", "report", "--storage", url, "--out", str(r.out / "report"), "--no-artifacts")
    export = _export_on_cpu(r, "export", url, "conf-entropy", "threshold")
    if export is not None:
        r.cli("retrain", "retrain", str(export / "arch.json"), "--epochs", "0.5", "--out", str(r.out / "retrained"))
    # Exit policies searched on the GPU, exported, and run by the exported model on a CPU-only
    # process; and a study that searches the policy per trial.
    for policy in ("decider", "ensemble"):
        url = r.search(f"rule-{policy}", plain, "--set", f"search.exit_rule={policy}", *dev)
        _export_on_cpu(r, f"export-{policy}", url, f"rule-{policy}", policy)
    r.search("rule-policy", plain, "--set", "search.exit_rule=policy", *dev)
    lut = r.out / "lut.json"
    if r.cli("profile", "profile", *TINY, "--device", r.device, "--out", str(lut), "--repeats", "5"):
        r.search("latency", plain, "--objective", "latency", "--latency-table", str(lut), *dev)


def _export_on_cpu(r: Runner, name: str, url: str, study: str, policy: str) -> Path | None:
    """Export a study's chosen trial (check ``name``), then load it and run the exported model and
    its TorchScript file on a CPU-only process (``name``-loads-on-cpu); the folder, if exported."""
    out = r.out / name
    if not r.cli(name, "export", "--storage", url, "--study", study, "--out", str(out)):
        return None
    code = ("import torch; from exitnas.results import load_export; m, meta = load_export(%r); "
            "assert meta.get('policy', 'threshold') == %r; x = torch.rand(2, *meta['input']['shape']); print(m(x)); "
            "ts = torch.jit.load(%r, map_location='cpu'); print(ts(x[:1]))"
            % (str(out), policy, str(out / "model.torchscript.pt")))
    r.python(f"{name}-loads-on-cpu", code, env={"CUDA_VISIBLE_DEVICES": ""})
    return out


def run_gpu_tests(r: Runner) -> None:
    """The gpu-marked tests (the device's image has pytest): only the files that hold some, so that
    test modules needing Ray, PostgreSQL or the dashboard (not on the device) are not collected."""
    t0 = time.perf_counter()
    files = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "tests").rglob("test_*.py")
                   if "mark.gpu" in f.read_text())
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
                       capture_output=True, text=True, cwd=ROOT, env=r.env, timeout=600)
    r.checks.append(Check("gpu-tests", p.returncode == 0, time.perf_counter() - t0,
                          "\n".join((p.stdout + p.stderr).strip().splitlines()[-12:])))
    print(f"{'PASS' if p.returncode == 0 else 'FAIL'} gpu-tests", flush=True)


def training_speed(device: str, n: int = 8192) -> dict[str, dict[str, float]]:
    """The sandwich step's speed figures (see ``_train_speed``) at three batch sizes, on ``n``
    random 32×32 images standing in for CIFAR-10 (the speed does not depend on the pixels)."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _train_speed import measure, random_splits
    from _train_speed_report import _row

    splits, out = random_splits(n), {}
    gpu = device == "cuda"
    for batch in ((256, 1024, 2048) if gpu else (32,)):
        try:
            with tempfile.TemporaryDirectory() as tmp:
                sp = measure(device, batch, splits, Path(tmp), steps=30 if gpu else 3, warmup=5 if gpu else 1,
                             profiled=5 if gpu else 1, pairs=10 if gpu else 3)
        except Exception as e:  # noqa: BLE001 - a measurement that fails is reported, the checks are kept
            print(f"supernet training, batch {batch}: failed ({type(e).__name__}: {e})", flush=True)
            continue
        out[str(batch)] = {**asdict(sp), "sandwich_over_static": sp.sandwich_over_static}
        print("supernet training, " + _row(sp), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (checks this script)")
    p.add_argument("--out", default="runs/gpu_check", help="folder for the runs, logs and gpu_check.json")
    p.add_argument("--skip-speed", action="store_true", help="leave out the training-speed measurement")
    p.add_argument("--speed-images", type=int, default=8192, help="random 32x32 images the speed is measured on")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    r = Runner(a.device, out)
    t0 = time.perf_counter()
    run_paths(r)
    if a.device == "cuda":
        run_gpu_tests(r)
    import torch

    summary = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu", "torch": torch.__version__,
               "seconds": time.perf_counter() - t0, "passed": sum(c.ok for c in r.checks), "checks": len(r.checks),
               "results": [asdict(c) for c in r.checks]}
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))  # kept if the speed runs are cut short
    if not a.skip_speed:
        summary["training_speed"] = training_speed(a.device, a.speed_images)
        (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    failed = [c.name for c in r.checks if not c.ok]
    print(f"{summary['passed']}/{len(r.checks)} checks passed in {summary['seconds']:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
