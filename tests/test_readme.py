"""The README's Python snippets run as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets' files land here
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippets
    torch.set_num_threads(1)
    for code in snippets:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_the_figures_benchmarks_numbers_remeasures_are_the_readmes():
    from benchmarks.numbers import ENTRIES

    text = README.read_text()
    missing = [entry.name for entry in ENTRIES if entry.readme not in text]
    assert not missing, f"README lacks the figures of {missing}"
