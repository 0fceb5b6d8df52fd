"""The CLI on bad input, as a table: every case ends with exit status 2, one line on stderr
starting ``exitnas: error:``, no traceback, and not one file added, changed or removed in the
working folder (checked by a snapshot of its whole tree before and after).

Cases run in process (``exitnas.cli.main``) in a copy of one prepared working folder: a tiny
trained supernet, a study, an empty study, an export and a few damaged files. A few run as a
real ``python -m exitnas`` too, for the console path.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TINY = ["--set", "space.channels=[8, 16]", "--set", "space.depths=[1, 2]", "--set", "space.widths=[0.5, 1.0]",
        "--set", "space.ratios=[0.0, 1.0]", "--set", "space.heads=[linear]", "--set", "train.batch_size=64",
        "--set", "train.epochs=0.1", "--set", "train.sandwich_random=0", "--set", "train.device=cpu",
        "--set", "train.progress=false"]
CKPT = "run/supernet.pt"
#: ``exitnas search`` on the trained supernet, storage in the working folder.
SEARCH = ["search", "--checkpoint", CKPT, "--study", "s2", "--trials", "2", "--set", "search.progress=false"]
EVAL = ["evaluate", "--checkpoint", CKPT, "--arch", "largest"]


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch PWNED",))


def _set(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


# (id, argv, words the one line must hold)
CASES: list[tuple[str, list[str], tuple[str, ...]]] = [
    # -- config values: type, range, finiteness, registered names -----------------------------------
    *[(f"value:{p}", ["train", *_set(p, "train.out=never")], (p.split("=")[0],)) for p in [
        "train.epochs=0", "train.epochs=-1", "train.epochs=.nan", "train.epochs=.inf", "train.batch_size=0",
        "train.batch_size=-3", "train.batch_size=2.5", "train.lr=-0.1", "train.lr=0", "train.lr=fast",
        "train.checkpoint_every=0", "train.checkpoint_every=-1", "train.sandwich_random=-1",
        "train.warmup_epochs=-1", "train.distill=-0.5", "train.label_smoothing=2", "train.momentum=5",
        "train.crop_pad=-1", "train.dfs_beta=1.5", "train.gate_cost=-1", "train.exit_sets=bogus",
        "train.seed=1.5", "train.flip=maybe", "train.loss=bogus", "train.routing=bogus", "space.channels=[0, 16]",
        "space.channels=[]", "space.depths=[0]", "space.widths=[0]", "space.ratios=[2]", "space.heads=[bogus]",
        "space.name=bogus", "data.name=bogus", "data.val_size=-1", "data.val_size=2.0", "data.seed=x",
        "search.confidence=bogus", "search.sampler=annealing", "search.trials=0", "search.workers=0",
        "search.seed=-1", "search.budget_mmacs=0", "search.gpus_per_worker=-1", "search.objective=speed",
        "search.backend=slurm", "search.recal_images=-1"]],
    ("unknown-key", ["train", *_set("train.lrr=0.1")], ("train.lrr", "'lr'")),
    ("unknown-section", ["train", *_set("trainn.lr=0.1")], ("trainn",)),
    ("override-without-value", ["train", "--set", "train.lr"], ("section.key=value",)),
    ("override-bad-yaml", ["train", *_set("train.lr=[")], ("train.lr",)),
    # -- config files ------------------------------------------------------------------------------------
    ("config-missing", ["train", "--config", "nope.yaml"], ("nope.yaml", "does not exist")),
    ("config-not-utf8", ["train", "--config", "latin1.yaml"], ("latin1.yaml", "UTF-8")),
    ("config-not-yaml", ["train", "--config", "broken.yaml"], ("broken.yaml", "YAML")),
    ("config-a-list", ["train", "--config", "list.yaml"], ("list.yaml", "mapping")),
    ("config-a-folder", ["train", "--config", "folder"], ("folder",)),
    ("config-a-pickle", ["train", "--config", "payload.pkl"], ("payload.pkl",)),
    ("config-bad-value", ["train", "--config", "negative.yaml"], ("train.epochs",)),
    # -- training: outputs, overwrites, resumes, datasets ---------------------------------------------
    ("train-out-is-a-file", ["train", *TINY, *_set("train.out=afile")], ("train.out", "is a file")),
    ("train-out-under-a-file", ["train", *TINY, *_set("train.out=afile/run")], ("train.out", "afile")),
    ("train-over-a-checkpoint", ["train", *TINY, *_set("train.out=run")], ("exists", "--resume", "--force")),
    ("resume-changed-lr", ["train", *TINY, *_set("train.out=run", "train.lr=0.05"), "--resume"], ("train.lr",)),
    ("resume-changed-batch", ["train", *TINY, *_set("train.out=run", "train.batch_size=32"), "--resume"],
     ("train.batch_size",)),
    ("resume-changed-seed", ["train", *TINY, *_set("train.out=run", "train.seed=3"), "--resume"], ("train.seed",)),
    ("resume-other-space", ["train", *TINY, *_set("train.out=run", "space.channels=[8, 24]"), "--resume"],
     ("another search space",)),
    ("resume-crafted-pickle", ["train", *TINY, *_set("train.out=evil"), "--resume"], ("cannot be read safely",)),
    ("resume-no-model", ["train", *TINY, *_set("train.out=nomodel"), "--resume"], ("no 'model'",)),
    ("train-device-bogus", ["train", *TINY, *_set("train.out=never", "train.device=tpu")], ("train.device",)),
    ("cifar-missing", ["train", *TINY, *_set("train.out=never", "data.name=cifar10", "data.root=/nonexistent")],
     ("cifar10", "/nonexistent")),
    ("cifar-crafted-pickle", ["train", *TINY, *_set("train.out=never", "data.name=cifar10", "data.root=cifar")],
     ("refused", "system")),
    ("image-folder-missing", ["train", *TINY, *_set("train.out=never", "data.name=image-folder",
                                                    "data.root=nowhere")], ("nowhere",)),
    # -- evaluate ------------------------------------------------------------------------------------
    ("eval-checkpoint-missing", ["evaluate", "--checkpoint", "none.pt", "--arch", "largest"], ("none.pt",)),
    ("eval-checkpoint-pickle", ["evaluate", "--checkpoint", "evil/supernet.pt", "--arch", "largest"],
     ("cannot be read safely",)),
    ("eval-checkpoint-garbage", ["evaluate", "--checkpoint", "garbage.pt", "--arch", "largest"], ("garbage.pt",)),
    ("eval-checkpoint-no-model", ["evaluate", "--checkpoint", "nomodel/supernet.pt", "--arch", "largest"],
     ("no 'model'",)),
    ("eval-checkpoint-no-config", ["evaluate", "--checkpoint", "noconfig.pt", "--arch", "largest"],
     ("no 'config'",)),
    ("eval-checkpoint-bad-space", ["evaluate", "--checkpoint", "badspace.pt", "--arch", "largest"],
     ("'space' is malformed",)),
    ("eval-no-checkpoint", ["evaluate", "--arch", "largest"], ("--checkpoint",)),
    ("eval-storage-and-config", ["evaluate", "--storage", "sqlite:///study.db", "--config", "list.yaml",
                                 "--arch", "largest"], ("--config",)),
    ("eval-arch-missing", [*EVAL[:3], "--arch", "none.json"], ("none.json",)),
    ("eval-arch-not-json", [*EVAL[:3], "--arch", "latin1.yaml"], ("latin1.yaml", "JSON")),
    ("eval-arch-a-pickle", [*EVAL[:3], "--arch", "payload.pkl"], ("payload.pkl",)),
    ("eval-arch-outside-space", [*EVAL[:3], "--arch", "wide.json"], ("width",)),
    ("eval-thresholds-not-numbers", [*EVAL, "--thresholds", "0.5,abc"], ("--thresholds",)),
    ("eval-thresholds-out-of-range", [*EVAL, "--thresholds", "1.5,0.5,0.5"], ("[0, 1]",)),
    ("eval-thresholds-count", [*EVAL, "--thresholds", "0.5"], ("thresholds",)),
    ("eval-out-a-folder", [*EVAL, "--out", "folder"], ("--out", "is a folder")),
    ("eval-out-under-a-file", [*EVAL, "--out", "afile/x.json"], ("--out", "afile")),
    ("eval-study-missing", ["evaluate", "--storage", "sqlite:///none.db", "--arch", "largest"], ("none.db",)),
    # -- search ------------------------------------------------------------------------------------------
    ("search-checkpoint-missing", [*SEARCH[:1], "--checkpoint", "none.pt", "--storage", "sqlite:///n.db"],
     ("none.pt",)),
    ("search-checkpoint-pickle", ["search", "--checkpoint", "evil/supernet.pt", "--storage", "sqlite:///n.db"],
     ("cannot be read safely",)),
    ("search-storage-url", [*SEARCH, "--storage", "mysql://db/x"], ("not a storage URL",)),
    ("search-sqlite-under-a-file", [*SEARCH, "--storage", "sqlite:///afile/x.db"], ("search.storage", "afile")),
    ("search-sqlite-a-folder", [*SEARCH, "--storage", "sqlite:///folder"], ("is a folder",)),
    ("search-sqlite-not-a-database", [*SEARCH, "--storage", "sqlite:///latin1.yaml"], ("latin1.yaml",)),
    ("search-journal-not-a-journal", [*SEARCH, "--storage", "words.log"], ("not an Optuna journal",)),
    ("search-journal-a-pickle", [*SEARCH, "--storage", "payload.log"], ("not an Optuna journal",)),
    ("search-cache-dir-a-file", [*SEARCH, "--storage", "sqlite:///n.db", *_set("search.cache_dir=afile")],
     ("search.cache_dir", "is a file")),
    ("search-ray-on-sqlite", [*SEARCH, "--storage", "sqlite:///n.db", "--backend", "ray", "--workers", "2"],
     ("journal:///",)),
    ("search-sampler", [*SEARCH, "--storage", "sqlite:///n.db", "--sampler", "annealing"], ("nsga2",)),
    ("search-confidence", [*SEARCH, "--storage", "sqlite:///n.db", *_set("search.confidence=bogus")],
     ("search.confidence",)),
    ("search-lut-missing", [*SEARCH, "--storage", "sqlite:///n.db", "--objective", "latency", "--latency-table",
                            "none.json"], ("none.json",)),
    ("search-lut-strings", [*SEARCH, "--storage", "sqlite:///n.db", "--objective", "latency", "--latency-table",
                            "lut-strings.json"], ("lut-strings.json", "median_ms")),
    ("search-lut-a-pickle", [*SEARCH, "--storage", "sqlite:///n.db", "--objective", "latency", "--latency-table",
                             "payload.pkl"], ("payload.pkl",)),
    ("search-other-directions", ["search", "--checkpoint", CKPT, "--study", "other", "--storage",
                                 "sqlite:///study.db", "--set", "search.progress=false"], ("other",)),
    # -- report ------------------------------------------------------------------------------------------
    ("report-sqlite-missing", ["report", "--storage", "sqlite:///none.db"], ("none.db", "does not exist")),
    ("report-journal-missing", ["report", "--storage", "none.log"], ("none.log",)),
    ("report-study-unknown", ["report", "--storage", "sqlite:///study.db", "--study", "nope"], ("nope",)),
    ("report-two-studies", ["report", "--storage", "sqlite:///study.db"], ("--study",)),
    ("report-empty-study", ["report", "--storage", "sqlite:///study.db", "--study", "empty"], ("empty",)),
    ("report-foreign-study", ["report", "--storage", "sqlite:///study.db", "--study", "other"], ("directions",)),
    ("report-not-a-journal", ["report", "--storage", "payload.log"], ("not an Optuna journal",)),
    ("report-bad-url", ["report", "--storage", "bogus://x"], ("not a storage URL",)),
    ("report-out-a-file", ["report", "--storage", "sqlite:///study.db", "--study", "s", "--out", "afile"],
     ("--out", "is a file")),
    ("report-unknown-trial", ["report", "--storage", "sqlite:///study.db", "--study", "s", "--trial", "999"],
     ("999",)),
    # -- export ------------------------------------------------------------------------------------------
    ("export-sqlite-missing", ["export", "--storage", "sqlite:///none.db", "--study", "s", "--out", "x"],
     ("none.db",)),
    ("export-study-unknown", ["export", "--storage", "sqlite:///study.db", "--study", "nope", "--out", "x"],
     ("nope",)),
    ("export-empty-study", ["export", "--storage", "sqlite:///study.db", "--study", "empty", "--out", "x"],
     ("no complete trial",)),
    ("export-unknown-trial", ["export", "--storage", "sqlite:///study.db", "--study", "s", "--trial", "999",
                              "--out", "x"], ("999",)),
    ("export-out-a-file", ["export", "--storage", "sqlite:///study.db", "--study", "s", "--trial", "0",
                           "--out", "afile"], ("--out", "is a file")),
    ("export-over-an-export", ["export", "--storage", "sqlite:///study.db", "--study", "s", "--trial", "0",
                               "--out", "export"], ("already holds an export", "--force")),
    # -- retrain -----------------------------------------------------------------------------------------
    ("retrain-missing", ["retrain", "none/arch.json"], ("none/arch.json",)),
    ("retrain-not-json", ["retrain", "latin1.yaml"], ("latin1.yaml",)),
    ("retrain-no-metrics", ["retrain", "nometrics/arch.json", "--out", "x"], ("metrics",)),
    ("retrain-thresholds-out-of-range", ["retrain", "highthr/arch.json", "--out", "x"], ("[0, 1]",)),
    ("retrain-weights-changed", ["retrain", "changed/arch.json", "--out", "x"], ("sha256",)),
    ("retrain-epochs-zero", ["retrain", "export/arch.json", "--epochs", "0", "--out", "x"], ("--epochs",)),
    ("retrain-epochs-nan", ["retrain", "export/arch.json", "--epochs", "nan", "--out", "x"], ("--epochs",)),
    ("retrain-lr-negative", ["retrain", "export/arch.json", "--lr", "-1", "--out", "x"], ("--lr",)),
    ("retrain-out-an-export", ["retrain", "export/arch.json", "--out", "export"], ("already holds an export",)),
    ("retrain-out-a-file", ["retrain", "export/arch.json", "--out", "afile"], ("--out", "is a file")),
    # -- profile -----------------------------------------------------------------------------------------
    ("profile-out-a-folder", ["profile", *TINY, "--out", "folder"], ("--out", "is a folder")),
    ("profile-out-under-a-file", ["profile", *TINY, "--out", "afile/lut.json"], ("--out", "afile")),
    ("profile-bad-value", ["profile", *_set("train.lr=-1"), "--out", "lut.json"], ("train.lr",)),
    # -- demo --------------------------------------------------------------------------------------------
    ("demo-out-a-file", ["demo", "--quick", "--out", "afile"], ("--out", "is a file")),
]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _study_db(path: Path, ckpt_config: dict) -> None:  # type: ignore[type-arg]
    """Studies ``s`` (one complete trial), ``empty`` (none) and ``other`` (not an exitnas search)."""
    import optuna
    from optuna.distributions import FloatDistribution

    from exitnas._storage import open_storage

    storage = open_storage(f"sqlite:///{path}", heartbeat=False)
    s = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "minimize"])
    s.set_user_attr("config", ckpt_config)
    s.add_trial(optuna.trial.create_trial(values=[0.5, 1.0], params={"thr_0_0": 0.5},
                                          distributions={"thr_0_0": FloatDistribution(0, 1)}))
    optuna.create_study(storage=storage, study_name="empty", directions=["maximize", "minimize"])
    optuna.create_study(storage=storage, study_name="other", directions=["minimize"])
    storage.engine.dispose()  # type: ignore[attr-defined]


def _damaged_exports(w: Path, tiny_export) -> None:  # type: ignore[no-untyped-def]
    tiny_export(w / "export")
    for name, change in (("nometrics", lambda m: m.pop("metrics")),
                         ("highthr", lambda m: m.update(thresholds=[1.5])), ("changed", None)):
        shutil.copytree(w / "export", w / name)
        meta = json.loads((w / name / "arch.json").read_text())
        if change is None:
            (w / name / "weights.safetensors").write_bytes(b"\0" * 8 + (w / name / "weights.safetensors").read_bytes())
        else:
            change(meta)
        (w / name / "arch.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, tiny_export) -> Path:  # type: ignore[no-untyped-def]
    """The prepared working folder every case starts from (copied)."""
    from exitnas._config import load_config
    from exitnas.search_space import SearchSpace
    from exitnas.training import load_checkpoint, save_checkpoint, train_supernet

    w = tmp_path_factory.mktemp("template")
    torch.set_num_threads(1)
    train_supernet(load_config(None, [v for v in TINY if v != "--set"] + [f"train.out={w / 'run'}"]))
    state = load_checkpoint(w / CKPT)
    for name, drop in (("nomodel/supernet.pt", "model"), ("noconfig.pt", "config")):
        save_checkpoint(w / name, {k: v for k, v in state.items() if k not in (drop, "format")})
    save_checkpoint(w / "badspace.pt", {**{k: v for k, v in state.items() if k != "format"}, "space": [1]})
    (w / "evil").mkdir()
    (w / "evil" / "supernet.pt").write_bytes(pickle.dumps({"format": 1, "space": {}, "model": _Payload()}))
    (w / "garbage.pt").write_bytes(os.urandom(256))
    _study_db(w / "study.db", state["config"])
    _damaged_exports(w, tiny_export)
    (w / "cifar").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (w / "cifar" / name).write_bytes(pickle.dumps({b"data": _Payload(), b"labels": [0]}))
    (w / "afile").write_text("a file\n")
    (w / "folder").mkdir()
    (w / "latin1.yaml").write_bytes("train:\n  out: caf\xe9\n".encode("latin-1"))
    (w / "broken.yaml").write_text("train: {lr: [\n")
    (w / "list.yaml").write_text("- 1\n- 2\n")
    (w / "words.log").write_text("a log of words\nnot of a study\n")
    (w / "negative.yaml").write_text("train:\n  epochs: -1\n")
    (w / "payload.pkl").write_bytes(pickle.dumps(_Payload()))
    (w / "payload.log").write_bytes(pickle.dumps(_Payload()) + b"\n")
    wide = SearchSpace.from_dict(state["space"]).largest().to_dict()
    wide["widths"][0] = 0.7  # not a width of the space
    (w / "wide.json").write_text(json.dumps(wide))
    lut = {"format": 2, "entries": {"call": {"median_ms": "fast"}}, "space": {}, "image_size": 8, "device": "cpu",
           "device_name": "x", "torch_version": "2", "date": "d", "stat": "median_ms", "context_factor": 1.0,
           "runtime": "r"}
    (w / "lut-strings.json").write_text(json.dumps(lut))
    return w


@pytest.fixture
def workdir(template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    w = tmp_path / "w"
    shutil.copytree(template, w)
    monkeypatch.chdir(w)
    return w


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 80
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(workdir: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: tuple[str, ...]) -> None:
    from exitnas.cli import main

    before = _tree(workdir)
    rc = main(argv)
    # SQLite keeps -wal/-shm files beside a database while a connection is open; a process closes
    # them at exit, and in process the storages the command opened are collected here.
    if any(workdir.glob("*.db-*")):
        gc.collect()
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("exitnas: error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    after = _tree(workdir)
    assert sorted(set(after) ^ set(before)) == [], "files added or removed"
    assert [k for k in before if before[k] != after[k]] == [], "files changed"
    assert not (workdir / "PWNED").exists()


@pytest.mark.parametrize("case", ["value:train.epochs=.nan", "config-not-utf8", "search-journal-a-pickle",
                                  "export-empty-study", "cifar-crafted-pickle"])
def test_bad_input_on_the_console(workdir: Path, case: str) -> None:
    """The same through ``python -m exitnas``: nothing else (a warning, Optuna's log) on stderr."""
    argv = next(c[1] for c in CASES if c[0] == case)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = _tree(workdir)
    proc = subprocess.run([sys.executable, "-m", "exitnas", *argv], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("exitnas: error: "), proc.stderr
    assert _tree(workdir) == before
