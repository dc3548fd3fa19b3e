"""The web server under hostile clients: what reaches it over HTTP (the page's own events through
`/gradio_api/queue/join`, the named endpoints, uploads, file routes) ends in a message, in bounded
memory, and the server keeps serving. One server for the module, started with its own TMPDIR.
"""
import http.server
import json
import threading
import uuid
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web demo's tests need fractalgen-pytorch[demo]")
httpx = pytest.importorskip("httpx", reason="the web demo's tests need fractalgen-pytorch[demo]")
from test_serve import NETWORK_MARK, Client, Server, free_port, handle_file, pixels  # noqa: E402 (after the skips)

from fractalgen.cli import main as cli_main  # noqa: E402
from fractalgen.cli import web as app  # noqa: E402

HUGE = 13000  # pixels per side declared by the hostile PNG: 169 M pixels, ten times the page's bound
PROBE_HOST = "fractalgen-probe.invalid"  # a name that never resolves: the server must not even look it up


def png_declaring(side: int) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels, a few kilobytes: zlib over zero rows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def memory(pid: int, field: str) -> int:
    """A /proc/PID/status field in bytes (VmRSS: now; VmHWM: peak since the last reset)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(temp_root):
    s = Server("--queue-size", "6", env={"TMPDIR": str(temp_root)})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile") / "huge.png"
    path.write_bytes(png_declaring(HUGE))
    with Image.open(path) as image:  # the test's own premise: a readable header declaring the size
        assert image.size == (HUGE, HUGE)
    assert path.stat().st_size < 64 * 1024
    return path


class Page:
    """The page's own events, called as its scripts call them: upload, then /gradio_api/queue/join."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=120)
        config = self.http.get(f"{self.url}/config").json()
        self.ids = {c["props"].get("elem_id"): c["id"] for c in config["components"] if c["props"].get("elem_id")}
        self.events = config["dependencies"]

    def upload(self, path) -> dict:
        with open(path, "rb") as f:
            [stored] = self.http.post(f"{self.url}/gradio_api/upload", files={"files": f}).raise_for_status().json()
        return {"path": stored, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}

    def event(self, first_input: str, inputs: int) -> int:
        """The id of the event whose first input is the component with this elem_id."""
        [found] = [e["id"] for e in self.events
                   if e["inputs"] and e["inputs"][0] == self.ids[first_input] and len(e["inputs"]) == inputs]
        return found

    def named(self, api_name: str) -> int:
        [found] = [e["id"] for e in self.events if e.get("api_name") == api_name]
        return found

    def call(self, fn_index: int, data: list) -> dict:
        """The event's last message: {"success": True, "output": ...} or {"success": False, "title"/"error": ...}."""
        session = uuid.uuid4().hex
        joined = self.http.post(f"{self.url}/gradio_api/queue/join",
                                json={"data": data, "fn_index": fn_index, "session_hash": session})
        assert joined.status_code == 200, joined.text
        with self.http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": session}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
        raise AssertionError("the event never completed")


@pytest.fixture(scope="module")
def page(server):
    return Page(server.url)


def refused(message: dict, *words) -> str:
    assert message["success"] is False, message
    text = json.dumps(message)
    for word in words:
        assert word in text, text
    return text


# ---- pictures: the declared size is checked before anything is decoded ------------------------------

def test_every_picture_event_checks_the_declared_size_before_decoding(server, client, page, huge_png):
    editor_file = page.upload(huge_png)
    editor = {"background": editor_file, "layers": [editor_file], "composite": editor_file, "id": None}
    likelihood_file = page.upload(huge_png)
    preset = next(e for e in page.events if e["inputs"][:1] == [page.ids["inpaint-editor"]]
                  and len(e["inputs"]) == 2)["id"]
    calls = {
        "a preset button": lambda: page.call(preset, [editor, "lower half"]),
        "Regenerate": lambda: page.call(page.event("inpaint-editor", 4), [editor, -1, 1, 0]),
        "Measure": lambda: page.call(page.event("likelihood-image", 1), [likelihood_file]),
        "a data: URL": lambda: page.call(page.event("likelihood-image", 1), [
            {"url": "data:image/png;base64," + __import__("base64").b64encode(huge_png.read_bytes()).decode(),
             "meta": {"_type": "gradio.FileData"}}]),
    }
    for what, call in calls.items():
        reset_peak(server.process.pid)
        refused(call(), "at most")
        growth = memory(server.process.pid, "VmHWM") - memory(server.process.pid, "VmRSS")
        assert growth < 150 * 2**20, f"{what}: the server's peak memory grew by {growth / 2**20:.0f} MB"

    for endpoint, arguments in {"/likelihood": [handle_file(str(huge_png))],
                                "/inpaint": [handle_file(str(huge_png)), handle_file(str(huge_png)), -1, 0]}.items():
        reset_peak(server.process.pid)
        with pytest.raises(Exception, match="at most"):
            client.predict(*arguments, api_name=endpoint)
        growth = memory(server.process.pid, "VmHWM") - memory(server.process.pid, "VmRSS")
        assert growth < 150 * 2**20, f"{endpoint}: the server's peak memory grew by {growth / 2**20:.0f} MB"
    assert pixels(client.predict(1, 0, api_name="/sample")).shape == (28, 28)  # still serving


def test_check_pixels_reads_only_the_header(huge_png):
    with pytest.raises(Exception, match="at most"):
        app.check_pixels(huge_png, "the upload")
    with pytest.raises(Exception, match="the mask is missing"):
        app.open_bounded(None, "the mask")


# ---- messages that name the field ----------------------------------------------------------------

def test_missing_mask_and_non_numbers_are_named(client, tmp_path):
    digit = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(digit)
    with pytest.raises(Exception, match="the mask is missing"):
        client.predict(handle_file(str(digit)), None, -1, 0, api_name="/inpaint")
    with pytest.raises(Exception, match="the image is missing"):
        client.predict(None, handle_file(str(digit)), -1, 0, api_name="/inpaint")
    for arguments, field in [(("three", 0), "the label"), ((1, "x"), "the seed"), ((1, 0, "high"), "the guidance"),
                             ((1, 0, None, "nan"), "the temperature"), ((1.5, 0), "the label")]:
        with pytest.raises(Exception, match=field):
            client.predict(*arguments, api_name="/sample")


# ---- no fetching on a client's behalf ------------------------------------------------------------

class Recorder(http.server.BaseHTTPRequestHandler):
    contacted: ClassVar[list] = []

    def do_GET(self):
        Recorder.contacted.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(Image.new("L", (1, 1)).tobytes())

    def log_message(self, *args):
        pass


def test_client_urls_are_never_fetched(server, client, page):
    listener = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=listener.serve_forever, daemon=True).start()
    local = f"http://127.0.0.1:{listener.server_address[1]}/picture.png"
    try:
        for url in (local, f"http://{PROBE_HOST}/picture.png", f"HTTPS://{PROBE_HOST}/x.png", f"//{PROBE_HOST}/x"):
            for route in ("/gradio_api/file=", "/gradio_api/proxy="):
                assert page.http.get(page.url + route + url).status_code == 403
            given = {"path": url, "meta": {"_type": "gradio.FileData"}}
            why = "does not fetch URLs" if url.startswith("http:") else "upload it first"  # a path to Gradio
            refused(page.call(page.named("likelihood"), [given]), why)
            refused(page.call(page.event("likelihood-image", 1), [given]), why)
            if url.startswith("http:"):  # what gradio_client sends for a URL
                with pytest.raises(Exception, match="does not fetch URLs"):
                    client.predict(handle_file(url), api_name="/likelihood")
    finally:
        listener.shutdown()
    assert Recorder.contacted == []
    assert not [line for line in server.lines if NETWORK_MARK in line]  # not even a name lookup
    assert pixels(client.predict(2, 0, api_name="/sample")).shape == (28, 28)


# ---- uploads: a quota, a folder of the server's own ------------------------------------------------

def test_uploads_beyond_the_quota_are_refused(page, tmp_path):
    big, rng = tmp_path / "big.bin", np.random.default_rng(0)
    statuses = []
    for _ in range(app.MAX_STORED_BYTES // (15 * 2**20) + 2):
        big.write_bytes(rng.bytes(15 * 2**20))  # new contents each time: Gradio stores one copy of equal files
        with open(big, "rb") as f:
            statuses.append(page.http.post(f"{page.url}/gradio_api/upload", files={"files": f}).status_code)
    accepted = statuses.count(200)
    assert 0 < accepted <= app.MAX_STORED_BYTES // (15 * 2**20) and statuses[-1] == 429, statuses
    chunked = page.http.post(f"{page.url}/gradio_api/upload", content=iter([b"x" * 10]))  # no stated length
    assert chunked.status_code == 411


def test_door_counts_files_and_bytes(tmp_path, monkeypatch):
    import asyncio

    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "b").write_bytes(b"x" * 100)
    door = app.Door(None, tmp_path)
    scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": [(b"content-length", b"10")]}
    assert door.refusal(scope) is None
    monkeypatch.setattr(app, "MAX_STORED_FILES", 2)
    assert door.refusal(scope)[0] == 429
    monkeypatch.setattr(app, "MAX_STORED_FILES", 100)
    monkeypatch.setattr(app, "MAX_STORED_BYTES", 205)
    assert door.refusal(scope)[0] == 429
    assert door.refusal({**scope, "method": "GET", "path": "/gradio_api/file=/tmp/x"}) is None
    assert asyncio.iscoroutinefunction(door.__call__)


def test_user_errors_are_one_line_in_the_server_log(server):
    log = "".join(server.lines)
    assert "Traceback" not in log, log[-3000:]
    assert "fractalgen serve: refused: " in log


def test_stopping_removes_the_server_folder(server, temp_root):
    assert list(temp_root.iterdir()) != []  # the folder the server works in, while it runs
    server.stop()
    assert list(temp_root.iterdir()) == []


# ---- the command line ----------------------------------------------------------------------------

def test_serve_on_a_busy_port_or_a_bad_host_is_one_line(capsys):
    import socket
    import tempfile

    temp = tempfile.gettempdir()
    folders = set(Path(temp).glob("fractalgen-serve-*"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--port", str(port)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fractalgen serve: error: cannot listen on 127.0.0.1:") and \
            "in use" in err[0], err
    assert cli_main(["serve", "--host", PROBE_HOST, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and PROBE_HOST in err[0] and "Traceback" not in err[0], err
    assert tempfile.gettempdir() == temp and set(Path(temp).glob("fractalgen-serve-*")) == folders  # nothing left


# ---- the page's words and numbers ------------------------------------------------------------------

def test_size_comparisons_say_smaller_or_larger():
    assert app.compared(70, 100) == "1.43x smaller"
    assert app.compared(100, 70) == "1.43x larger"
    assert app.compared(5, 5) == "the same size"


class Named:
    """A stand-in for a model that carries class names."""

    def __init__(self, names, num_classes=None, img_size=16, channels=3):
        self.class_names = names
        self.config = type("Config", (), {"num_classes": len(names) if num_classes is None else num_classes,
                                          "img_size": img_size, "channels": channels})()


def test_class_menu_uses_the_model_class_names():
    model = Named(["circle", "cross", "square", "triangle"])
    assert app.class_choices(model) == [("unconditional", -1), ("circle", 0), ("cross", 1), ("square", 2),
                                        ("triangle", 3)]
    assert app.label_of(model, "square") == 2 and app.label_of(model, 3) == 3 and app.label_of(model, -1) is None
    assert app.described(model) == "16x16 colour, 4 classes: circle, cross, square, triangle"
    assert app.class_choices(Named(["a", "b"], num_classes=3))[1:] == [("0", 0), ("1", 1), ("2", 2)]  # mismatch
    assert app.class_choices(Named({0: "zero", 1: "one"}))[1:] == [("zero", 0), ("one", 1)]  # id2label style


def test_held_out_digit_keeps_the_chosen_class(tmp_path):
    import fractalgen

    mnist = fractalgen.load("mnist")
    demo = app.Demo(app.Models(mnist, mnist, "mnist", "mnist"), tmp_path)
    editor, note = demo.digit_for_editor(3, 5)
    _, truth = demo.heldout_digit(3)
    assert editor["background"].size == (28, 28)
    assert f"a {truth}" in note and "class 5" in note
    assert "unconditional" in demo.digit_for_editor(3, -1)[1]
