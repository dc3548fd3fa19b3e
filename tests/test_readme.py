"""The README's Python snippets run as written."""
import re

from frame import ROOT

README = ROOT / "README.md"


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the snippets' files land here
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert snippets
    for code in snippets:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_the_figures_benchmarks_numbers_remeasures_are_the_readmes():
    from benchmarks.readme_numbers import ENTRIES

    text = README.read_text()
    missing = [entry.name for entry in ENTRIES if entry.readme not in text]
    assert not missing, f"README lacks the figures of {missing}"


def test_the_own_images_example_runs_as_written_on_a_tiny_folder(tmp_path, monkeypatch, capsys):
    """The "Train on your own images" commands, in order, with a smaller folder and two training steps."""
    import json
    import shlex

    from benchmarks import shapes
    from fractalgen.cli import main

    section = README.read_text().split("## Train on your own images", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line.split("#", 1)[0]) for line in block.strip().splitlines()]
    assert commands[0][:2] == ["python", "-m"] and len(commands) == 6
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        if argv[:3] == ["python", "-m", "benchmarks.shapes"]:
            shapes.main([*argv[3:], "--train", "8", "--val", "4", "--size", "8"])
        elif argv[1] == "serve":  # starts a server: its arguments are checked, the page is test_serve's
            assert argv[2:] == ["--checkpoint", "runs/shapes"]
        else:
            extra = ["--steps", "2", "--device", "cpu"] if argv[1] == "train" else []
            assert main([*argv[1:], *extra]) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "samples").glob("*.png"))) >= 16
    assert json.loads((tmp_path / "shapes-model" / "config.json").read_text())["id2label"]["0"] == "circle"
    assert (tmp_path / "runs" / "shapes" / "loss.png").is_file()


def section(title: str) -> str:
    """The text of the README's `## title` section, up to the next `## ` heading."""
    return README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_python_api_begins_within_the_first_80_lines():
    headings = [n for n, line in enumerate(README.read_text().splitlines(), 1) if line == "## Python API"]
    assert headings and headings[0] <= 80, headings


def test_the_documented_test_command_is_make_test():
    assert "    make test " in section("Quick start")  # .ci/run runs it; the Makefile defines it
    assert re.search(r"^test:", (ROOT / "Makefile").read_text(), re.M)


def test_the_layout_names_every_module_and_benchmark_and_only_files_that_exist():
    layout = section("Layout")
    package = ROOT / "src" / "fractalgen"
    top = [p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
           if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")]
    benches = [p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "__init__.py"]
    unnamed = [name for name in top + benches if not re.search(rf"(?<![\w.]){re.escape(name)}", layout)]
    assert not unnamed, f"the README's layout does not name {unnamed}"
    tree = {p.name for folder in (package, ROOT / "benchmarks", ROOT / "tests") for p in folder.rglob("*")}
    files = set(re.findall(r"\b\w+\.(?:py|md)\b", layout))
    folders = {name.rstrip("/") for name in re.findall(r"\b\w+/(?=[\s,;)]|$)", layout)}  # not bits/dim
    missing = (files | folders) - tree - {"src", "fractalgen", "benchmarks", "tests"}
    assert not missing, f"the README's layout names what the tree lacks: {missing}"
