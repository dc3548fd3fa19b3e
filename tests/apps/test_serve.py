"""The web demo (`fractalgen serve`), driven for real: a server on a free local port in a subprocess,
called through `gradio_client` and opened in Chromium (the system's, through Playwright: see `chromium`).

The server runs with a Python audit hook that reports every network connection and name lookup
to anything but the loopback address; the last test checks that there was none.

    FRACTALGEN_SCREENSHOT=docs/serve.png pytest tests/apps/test_serve.py   # refresh the README's screenshot
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from frame import ROOT
from PIL import Image

import fractalgen
from fractalgen.cli import main as cli_main
from fractalgen.data import mnist_split

# Skipped only where the optional extra is missing; a broken fractalgen.cli.web fails, it is not skipped.
pytest.importorskip("gradio", reason="the web demo's tests need fractalgen-pytorch[demo]")
gradio_client = pytest.importorskip("gradio_client", reason="the web demo's tests need fractalgen-pytorch[demo]")
Client, handle_file = gradio_client.Client, gradio_client.handle_file
from fractalgen.cli import web as app  # noqa: E402 (after the skips: it imports gradio)

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
NETWORK_MARK = "NETWORK-ACCESS:"

# Run inside the server process: report connections and lookups that leave the machine.
AUDITED_SERVER = f"""
import sys
LOCAL = {{"127.0.0.1", "localhost", "::1", "0.0.0.0", None}}
LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex")
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
        print("{NETWORK_MARK}", event, args[1], file=sys.stderr, flush=True)
    if event in LOOKUPS and args[0] not in LOCAL and args[0] not in (b"localhost", b"127.0.0.1"):
        print("{NETWORK_MARK}", event, args[0], file=sys.stderr, flush=True)
sys.addaudithook(hook)
from fractalgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`fractalgen serve` in a subprocess; its output is collected line by line."""

    def __init__(self, *flags, env=None):
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-c", AUDITED_SERVER, "serve", "--port", str(self.port), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()
        deadline = time.time() + 180
        while not any("running on" in line for line in self.lines):
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("fractalgen serve did not start:\n" + "".join(self.lines))
            time.sleep(0.2)
        self.url = next(line for line in self.lines if "running on" in line).split("running on")[1].split()[0]

    def _collect(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def server():
    s = Server("--queue-size", "3")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def digit(tmp_path_factory):
    """A held-out MNIST digit as a 28x28 grayscale PNG, and its pixels."""
    images, _ = mnist_split("val")
    folder = tmp_path_factory.mktemp("digit")
    path = folder / "digit.png"
    Image.fromarray(images[3]).save(path)
    return path, images[3]


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


# ---- the server --------------------------------------------------------------------------------

def test_listens_on_loopback_only(server):
    assert server.url.startswith(f"http://127.0.0.1:{server.port}")
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if int(port, 16) == server.port and state == "0A":  # 0A: LISTEN
            listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, little-endian hex
    assert Path("/proc/net/tcp6").exists() is False or f":{server.port:04X} " not in Path("/proc/net/tcp6").read_text()


def test_sample_endpoint(client):
    first = pixels(client.predict(3, 0, api_name="/sample"))
    again = pixels(client.predict(label=3, seed=0, api_name="/sample"))
    other = pixels(client.predict(-1, 1, api_name="/sample"))  # unconditional
    assert first.shape == (28, 28) and first.dtype == np.uint8
    assert np.array_equal(first, again)  # a seed is a seed
    assert not np.array_equal(first, other)
    assert first.max() > 128  # ink on a dark background: a digit, not an empty canvas


def test_inpaint_keeps_every_known_pixel(client, digit, tmp_path):
    path, original = digit
    mask = np.zeros((28, 28), np.uint8)
    mask[14:, 4:24] = 255  # white = regenerate
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = pixels(client.predict(handle_file(str(path)), handle_file(str(tmp_path / "mask.png")), 7, 0, 2,
                                api_name="/inpaint"))
    assert out.shape == (28, 56)  # two completions side by side
    known = mask == 0
    for completion in (out[:, :28], out[:, 28:]):
        assert np.array_equal(completion[known], original[known])
    assert not np.array_equal(out[:, :28], out[:, 28:])  # two different completions

    unconditional = pixels(client.predict(handle_file(str(path)), handle_file(str(tmp_path / "mask.png")),
                                          api_name="/inpaint"))
    assert np.array_equal(unconditional[known], original[known])


def test_likelihood_equals_fractalgen_nll(client, digit, capsys):
    path, _ = digit
    bits_per_dim, heat_map = client.predict(handle_file(str(path)), api_name="/likelihood")
    assert cli_main(["nll", "--data", str(path.parent), "--json", "--threads", "1"]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bits_per_dim"]
    assert bits_per_dim == pytest.approx(expected, abs=1e-5)
    assert Image.open(heat_map).width > 2 * 28  # the digit beside its map, scaled up


def test_bad_uploads_get_a_message_and_the_server_stays_up(client, digit, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n" * 20)
    with pytest.raises(Exception, match="not an image"):
        client.predict(handle_file(str(text)), api_name="/likelihood")
    huge = tmp_path / "huge.png"
    Image.new("1", (5000, 5000)).save(huge)  # 25 M pixels in a few kilobytes
    with pytest.raises(Exception, match="at most"):
        client.predict(handle_file(str(huge)), api_name="/likelihood")
    with pytest.raises(Exception, match="out of range"):
        client.predict(10, 0, api_name="/sample")
    odd = tmp_path / "odd.png"  # RGBA at the wrong size: converted and resized, not refused
    Image.new("RGBA", (40, 30), (255, 255, 255, 0)).save(odd)
    bits_per_dim, _ = client.predict(handle_file(str(odd)), api_name="/likelihood")
    assert bits_per_dim > 0
    assert pixels(client.predict(1, 0, api_name="/sample")).shape == (28, 28)


def test_eight_clients_at_once_get_an_image_or_a_busy_message(server):
    results = [None] * 8

    def call(i):
        try:
            results[i] = ("image", pixels(Client(server.url, verbose=False).predict(i % 10, i, api_name="/sample")))
        except Exception as e:  # noqa: BLE001 (any failure is recorded; the assertions below judge it)
            results[i] = ("error", str(e))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    kinds = [r[0] for r in results if r is not None]
    assert len(kinds) == 8
    assert "image" in kinds
    for kind, value in results:
        if kind == "image":
            assert value.shape == (28, 28)
        else:
            assert "try again" in value.lower()
    assert pixels(Client(server.url, verbose=False).predict(2, 0, api_name="/sample")).shape == (28, 28)


# ---- a real browser ----------------------------------------------------------------------------

def chromium() -> str | None:
    """The browser to drive: $FRACTALGEN_CHROMIUM, else /usr/bin/chromium, else one on PATH."""
    given = os.environ.get("FRACTALGEN_CHROMIUM")
    if given:
        assert Path(given).is_file(), f"FRACTALGEN_CHROMIUM={given} is not a file"
        return given
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def test_chromium_is_looked_for_in_the_environment_then_the_system_then_path(tmp_path, monkeypatch):
    for name in ("mine", "chromium-browser"):
        (tmp_path / name).write_text("#!/bin/sh\n")
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("FRACTALGEN_CHROMIUM", str(tmp_path / "mine"))
    assert chromium() == str(tmp_path / "mine")
    monkeypatch.delenv("FRACTALGEN_CHROMIUM")
    system = Path("/usr/bin/chromium").is_file()
    assert chromium() == ("/usr/bin/chromium" if system else str(tmp_path / "chromium-browser"))
    (tmp_path / "chromium-browser").unlink()
    assert chromium() == ("/usr/bin/chromium" if system else None)


def test_page_in_chromium(server, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="needs the playwright package")
    executable = chromium()
    if executable is None:
        pytest.skip("needs Chromium or Chrome: set FRACTALGEN_CHROMIUM=/path/to/it, put chromium on PATH, "
                    "or install it (`sudo make browser` on Debian/Ubuntu)")
    problems, hosts = [], set()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            expect = playwright.expect
            page.goto(server.url)
            for tab in ("Sample", "Inpaint / edit", "Likelihood"):  # rendered by the page's scripts
                page.get_by_role("tab", name=tab).wait_for(state="visible", timeout=60_000)
            page.get_by_role("button", name="Generate").click()
            page.locator("#sample-grid img").wait_for(timeout=120_000)
            page.locator("#sample-grid img").evaluate("img => img.decode()")
            assert page.locator("#sample-grid img").evaluate("img => img.naturalWidth") > 100
            time.sleep(1.5)  # let the animation run a little before the picture
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot))

            # Inpainting through the editor: a held-out digit, a preset painted as the brush layer, regenerate.
            page.get_by_role("tab", name="Inpaint / edit").click()
            page.locator("#inpaint-editor").get_by_role("button", name="Image").wait_for(timeout=60_000)
            page.get_by_role("button", name="Load this digit").click()
            # The note names the digit; the class stays what the user chose.
            expect(page.locator("#inpaint-note")).to_contain_text("loaded: a ", timeout=60_000)
            expect(page.locator("#inpaint-class input")).to_have_value("unconditional")
            brush = page.locator("#inpaint-editor").get_by_role("button", name="Brush", exact=True)
            expect(brush).to_have_class(re.compile(r"\bhighlight\b"), timeout=10_000)  # ready to paint
            page.get_by_role("button", name="lower half").click()
            time.sleep(2)  # the preset's layer reaches the editor (no model call: instant)
            page.get_by_role("button", name="Regenerate").click()
            page.locator("#inpaint-result img").wait_for(timeout=120_000)

            # Likelihood: a dash until measured, then three decimals.
            page.get_by_role("tab", name="Likelihood").click()
            expect(page.locator("#likelihood-bpd textarea")).to_have_value("–")
            page.locator("#likelihood-button").locator("..").locator("..").get_by_role(
                "button", name="Load this digit").click()
            page.locator("#likelihood-image img").wait_for(timeout=60_000)
            page.get_by_role("button", name="Measure").click()
            expect(page.locator("#likelihood-bpd textarea")).to_have_value(re.compile(r"^\d+\.\d{3}$"),
                                                                          timeout=120_000)
        finally:
            browser.close()
    assert problems == []
    assert hosts == {f"127.0.0.1:{server.port}"}  # nothing fetched from anywhere else
    if os.environ.get("FRACTALGEN_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["FRACTALGEN_SCREENSHOT"])


def test_no_network_access_from_the_server(server):
    assert not [line for line in server.lines if NETWORK_MARK in line]


# ---- reading uploads (no server) -------------------------------------------------------------------

def test_mask_pictures_become_known_pixels():
    painted = np.zeros((280, 280), np.uint8)
    painted[150:152, 0:280] = 255  # a thin stroke across row 15 of a 10x upscaled picture
    known = app.to_model_mask(Image.fromarray(painted), 28)
    assert known.shape == (28, 28) and known.dtype == __import__("torch").bool
    assert (~known).sum() == 28 and not known[15].any()
    assert app.to_model_mask(Image.new("L", (28, 28), 0), 28).all()


def test_uploads_are_read_as_the_nll_command_reads_files():
    model = fractalgen.load("mnist")
    gray, notes = app.to_model_image(Image.new("RGB", (28, 28), (9, 9, 9)), model)
    assert gray.shape == (1, 28, 28) and int(gray.max()) == 9 and notes == []
    resized, notes = app.to_model_image(Image.new("RGBA", (56, 40), (255, 0, 0, 0)), model)
    assert resized.shape == (1, 28, 28) and int(resized.min()) == 255  # transparent -> white
    assert any("resized" in n for n in notes) and any("transparent" in n for n in notes)


def test_inpainting_model_is_chosen_in_one_place():
    assert app.inpaint_checkpoint("runs/mine") == "runs/mine"
    assert app.inpaint_checkpoint(None) == "mnist_mar"  # the bundled MAR model: sees both sides of a hole


def test_readme_client_example_runs(server, capsys):
    """The README's gradio_client example (its ```py block), pointed at the test server."""
    readme = (ROOT / "README.md").read_text()
    [example] = re.findall(r"```py\n(.*?)```", readme, re.DOTALL)
    exec(compile(example.replace("http://127.0.0.1:7860/", server.url), "README.md", "exec"), {})
    assert "bits/dim" in capsys.readouterr().out


def test_serve_without_gradio_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "fractalgen.cli.web")  # imported afresh by the command
    monkeypatch.delattr(fractalgen.cli, "web")
    assert cli_main(["serve", "--port", str(free_port())]) == 2
    assert 'pip install "fractalgen-pytorch[demo]"' in capsys.readouterr().err


def test_the_old_name_fractalgen_app_still_imports_with_a_warning(monkeypatch):
    monkeypatch.delitem(sys.modules, "fractalgen.app", raising=False)
    with pytest.warns(DeprecationWarning, match="fractalgen.cli.web"):
        from fractalgen.app import serve
    assert serve is app.serve
