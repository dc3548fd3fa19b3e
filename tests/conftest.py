"""What every test shares: one CPU thread, slow tests opt-in (`pytest --runslow` or FRACTALGEN_SLOW=1),
a Gradio upload folder of its own. The shared helpers (tiny models, tiny data, the command line in
this process) are functions in tests/frame.py."""
import os
import shutil
import tempfile

import pytest
import torch

import fractalgen


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    # Gradio's uploads go to /tmp/gradio by default, a folder that belongs to whoever ran first (often
    # root): each run gets its own, which the server subprocesses inherit.
    if "GRADIO_TEMP_DIR" not in os.environ:
        config.gradio_temp = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="fractalgen-gradio-")


def pytest_unconfigure(config):
    if getattr(config, "gradio_temp", None):
        shutil.rmtree(config.gradio_temp, ignore_errors=True)
        del os.environ["GRADIO_TEMP_DIR"]


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("FRACTALGEN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models: more threads only add synchronisation on the shared CPUs the tests run on."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def autocast_seen(monkeypatch):
    """A list that gets, for each `FractalModel.generate` call, whether CPU autocast was on around it."""
    seen = []
    generate = fractalgen.FractalModel.generate

    def recording(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(fractalgen.FractalModel, "generate", recording)
    return seen
