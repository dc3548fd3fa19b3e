"""`fractalgen serve`: the web demo (fractalgen.cli.web) on this machine, at http://127.0.0.1:7860/ by default."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError
from .options import add_checkpoint, add_runtime, apply_runtime, integer


def register(subparsers):
    p = subparsers.add_parser("serve", help="a web page to sample, inpaint and measure likelihood "
                                            '(needs the demo extra: pip install "fractalgen-pytorch[demo]")')
    add_checkpoint(p, default=None)  # None: the bundled models (web.inpaint_checkpoint picks the inpainting one)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=integer(1, 65535), default=7860, help="port to listen on")
    p.add_argument("--workers", type=integer(1, 64), default=1, help="requests that run the model at once")
    p.add_argument("--queue-size", type=integer(1, 10000), default=4,
                   help="requests that may wait; later ones are told to retry")
    # One thread per request by default: the demo model's matrices are small, and requests run side by side.
    add_runtime(p, threads="1")
    p.set_defaults(func=run_serve)


@contextlib.contextmanager
def server_folder():
    """A temporary folder of the server's own, made the process's temporary folder before Gradio is
    imported (Gradio and torch make folders there at import and load time); removed, and the
    process's temporary folder restored, when the server stops."""
    folder = Path(tempfile.mkdtemp(prefix="fractalgen-serve-"))
    saved = {name: os.environ.get(name) for name in ("TMPDIR", "GRADIO_TEMP_DIR")}, tempfile.tempdir
    os.environ.update(TMPDIR=str(folder), GRADIO_TEMP_DIR=str(folder / "files"))
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for name, value in saved[0].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        tempfile.tempdir = saved[1]


def run_serve(args) -> int:
    with server_folder() as folder:
        try:
            from . import web
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in ("gradio", "gradio_client"):
                raise UserError('the web demo needs Gradio: pip install "fractalgen-pytorch[demo]"') from None
            raise
        device = apply_runtime(args)
        web.serve(args.checkpoint, host=args.host, port=args.port, preset=args.preset, workers=args.workers,
                  queue_size=args.queue_size, device=device, folder=folder)
    return 0
