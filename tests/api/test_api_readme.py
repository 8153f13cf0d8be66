"""The README's Python example runs as written, from `import tdpdm` to a saved Hugging Face
data set, so that it cannot rot. Only what makes it tiny is substituted (the run's size, the
local backend, the data location); the test checks that each substitution found its text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tdpdm_test_support import REPO, TINY_SETTINGS, torch_threads

pytestmark = pytest.mark.slow

MARKER = "<!-- readme-api-example -->"


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r"\n```python\n(.*?)```", text, re.S)
    assert found, f"README.md: no python block after {MARKER}"
    return found.group(1)


def test_readme_example_is_about_ten_lines() -> None:
    lines = [line for line in readme_example().splitlines() if line.strip()]
    assert lines[0].startswith("import") and 8 <= len(lines) <= 12


def test_readme_example_runs(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's relative runs/ paths land here
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    tiny = {
        **TINY_SETTINGS,
        "subset": 1500,
        "progress": False,
        "cache_dir": str(tmp_path / "cache"),
        "distributed.backend": "local",
    }
    code = readme_example()
    for old, new in (
        ('out="runs/api")', 'out="runs/api", settings=TINY, log=None)'),
        ('data_dir="../shared/datasets"', f"data_dir={str(shared_datasets)!r}"),
    ):
        assert code.count(old) == 1, f"the README example no longer contains {old!r}"
        code = code.replace(old, new)

    namespace = {"TINY": tiny}
    with torch_threads(1):
        exec(compile(code, "README.md (python example)", "exec"), namespace)

    printed = capsys.readouterr().out
    assert "differential privacy" in printed
    assert "['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']" in printed
    ds, images, more = namespace["ds"], namespace["images"], namespace["more"]
    assert len(ds) == 1000 and images.shape == (16, 28, 28)
    assert more[0].shape == (500, 28, 28) and len(more[1]) == 500
    assert (tmp_path / "runs" / "api" / "release" / "report.json").is_file()
    assert (tmp_path / "runs" / "api-hf" / "train.parquet").is_file()
