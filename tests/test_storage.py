"""Storage URLs: one rule for relative and absolute paths, SQLite and journal alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from exitnas._errors import UserError
from exitnas._storage import open_storage, storage_path


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///runs/x.db", "runs/x.db"),
    ("journal:///runs/x.log", "runs/x.log"),
    ("sqlite:////data/x.db", "/data/x.db"),
    ("journal:////data/x.log", "/data/x.log"),
    ("journal://runs/x.log", "runs/x.log"),  # two slashes: read as before, relative
    ("runs/x.jsonl", "runs/x.jsonl"),
    ("postgresql://u@h:1/d", None),
])
def test_one_rule_for_sqlite_and_journal(url: str, path: str | None) -> None:
    assert storage_path(url) == (Path(path) if path is not None else None)


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_relative_urls_write_under_the_current_folder(scheme: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ext = "db" if scheme == "sqlite" else "log"
    open_storage(f"{scheme}:///runs/exp/study.{ext}", heartbeat=False)
    assert (tmp_path / "runs" / "exp" / f"study.{ext}").is_file()  # parent folders created
    open_storage(f"{scheme}:///{tmp_path / 'abs' / f'study.{ext}'}", heartbeat=False)
    assert (tmp_path / "abs" / f"study.{ext}").is_file()


@pytest.mark.parametrize("scheme", ["sqlite", "journal"])
def test_a_folder_that_cannot_be_made_is_one_line(scheme: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a file where the URL needs a folder (root too cannot make it)
    with pytest.raises(UserError, match=r"cannot create folder .*file/sub \(.+\); the path is absolute "
                                        r"\(three slashes: relative, four: absolute\)"):
        open_storage(f"{scheme}:///{tmp_path / 'file' / 'sub' / 'study.x'}", heartbeat=False)
