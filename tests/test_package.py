"""The distribution: a wheel built from the source tree carries the code, the bundled model and its assets."""
import shutil
import subprocess
import sys
import zipfile

import pytest
from frame import ROOT

ASSETS = ["mnist.safetensors", "mnist5k.npz", "mnist_classifier.safetensors", "MNIST_LICENSE.txt"]


def test_wheel_holds_the_package_the_bundled_model_and_its_assets(tmp_path):
    pytest.importorskip("build")
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(tmp_path / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.startswith("fractalgen_pytorch-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ASSETS:
        assert f"fractalgen/assets/{asset}" in names, asset
    shipped = {name for name in names if name.startswith("fractalgen/") and name.endswith(".py")}
    expected = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src" / "fractalgen").rglob("*.py")}
    assert expected <= shipped
    info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "Name: fractalgen-pytorch" in metadata and "License-Expression: MIT AND CC-BY-SA-3.0" in metadata
    assert "Provides-Extra: hub" in metadata
    assert "fractalgen = fractalgen.cli:main" in zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
