"""The web demo behind `fractalgen serve`: a Gradio page over the library's public API.

Three tabs a user reads without the README (Sample, Inpaint / edit, Likelihood) and three named
endpoints for the ordinary `gradio_client`:

    /sample(label, seed)               -> image        label -1 = unconditional
    /inpaint(image, mask, label, seed) -> image        mask white = regenerate; label -1 = unconditional
    /likelihood(image)                 -> bits/dim, per-pixel map image

Everything that runs the model shares one queue: at most `workers` requests run at once and at
most `queue_size` wait; whoever comes after that is told the page is busy (Gradio's queue-full
message) instead of piling up work. Per request the work is bounded (images and completions are
capped). Uploads are read the way `fractalgen nll` reads image files, within bounds on file
size and pixel count; anything else becomes a message on the page, never a crashed worker.

Nothing is fetched from the network at run time: analytics off, no share link, the theme's
fonts are local, and the page is bound to 127.0.0.1 unless the user names another host.
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import io
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gradio as gr
import numpy as np
import torch
from gradio.exceptions import InvalidPathError
from PIL import Image, UnidentifiedImageError
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

import fractalgen

from ..conditional import centre_box
from ..data import mnist_split
from ..errors import UserError
from ..files import grid, to_pil
from ..formats import BUNDLED, DEFAULT_INPAINT_CHECKPOINT
from ..heatmap import heatmap_picture
from ..images import (
    AnimatedPicture,
    PictureError,
    PictureTooLarge,
    header,
    known_pixels,
    model_image,
    open_picture,
)
from ..model import label_problem
from ..settings import SEED_MAX
from ..visualize import GenerationRecorder, rows_figure, show_mask

# ---- limits: what one request may cost ----------------------------------------------------------

MAX_IMAGES = 16  # samples per request on the Sample tab
MAX_COMPLETIONS = 8  # completions per request on the Inpaint tab
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger pictures are refused before they are decoded
MAX_UPLOAD_SIZE = "16mb"  # Gradio refuses larger files at upload time
MAX_EDITOR_DRAFTS = 16  # pictures the editor's page may park on the server between events
DISPLAY_CELL = 112  # pixels per side of one image on the page (small images are scaled up, nearest)


# ---- which model each tab runs ---------------------------------------------------------------------

def inpaint_checkpoint(named: str | None) -> str:
    """The Inpaint tab's model: the checkpoint the user named; else the bundled MAR model when the
    package ships one (a MAR level sees known content on every side of a hole, an AR level only
    what comes before it in raster order); else the bundled `mnist`."""
    if named:
        return named
    return DEFAULT_INPAINT_CHECKPOINT if DEFAULT_INPAINT_CHECKPOINT in BUNDLED else "mnist"


@dataclass
class Models:
    sampler: fractalgen.FractalModel  # Sample and Likelihood tabs
    inpainter: fractalgen.FractalModel  # Inpaint tab
    sampler_name: str
    inpainter_name: str


def load_models(checkpoint: str | None, preset: str | None = None, device=None) -> Models:
    sample_name = checkpoint or "mnist"
    paint_name = inpaint_checkpoint(checkpoint)
    sampler = fractalgen.load(sample_name, config=preset, device=device)
    inpainter = (sampler if paint_name == sample_name
                 else fractalgen.load(paint_name, config=preset, device=device))
    return Models(sampler, inpainter, sample_name, paint_name)


# ---- reading what the user sends ---------------------------------------------------------------

UNREADABLE = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
NOT_AN_IMAGE = "is not an image this page can read (PNG, JPEG, WebP, BMP ...)"


def refuse(message: str) -> gr.Error:
    """A user's mistake: a message on the page, and one line (not a traceback) in the server's terminal."""
    print(f"fractalgen serve: refused: {message}", file=sys.stderr, flush=True)
    return gr.Error(message, print_exception=False)


def check_pixels(source, what: str) -> None:
    """Refuse a picture whose header declares more than MAX_UPLOAD_PIXELS, before anything is decoded.

    `source`: a path or a binary file object. Every picture reaching the server passes here first:
    the components' uploads (readable_uploads), the editor's drafts and the named endpoints' files.
    """
    with page_messages(what):
        header(source, what, MAX_UPLOAD_PIXELS)


def open_bounded(path, what: str = "the image") -> Image.Image:
    """Open an uploaded file as every picture is opened (fractalgen.images), bounded by MAX_UPLOAD_PIXELS."""
    if path is None:
        raise refuse(f"{what} is missing: upload one first")
    with page_messages(what):
        return open_picture(path, what, MAX_UPLOAD_PIXELS)


@contextlib.contextmanager
def page_messages(what: str):
    """The picture reader's refusals in the page's words (the path of a temporary file means nothing here)."""
    try:
        yield
    except PictureTooLarge as e:
        declared = f"is {e.size[0]}x{e.size[1]}" if e.size else f"declares more than {e.bound:,} pixels"
        raise refuse(f"{what} {declared}; this page takes at most {MAX_UPLOAD_PIXELS:,} pixels") from None
    except AnimatedPicture as e:
        raise refuse(f"{what} has {e.frames} frames (an animation or a multi-page file): "
                     "upload one still picture") from None
    except PictureError:
        raise refuse(f"{what} {NOT_AN_IMAGE}") from None


def carried_pictures(component, payload):
    """The pictures a component's payload carries, as paths or file objects, before it decodes them:
    an image's file (or data: URL); an editor's background, layers and composite (files, or the
    drafts its page sent earlier through `accept_blobs`)."""
    if payload is None:
        return
    if hasattr(payload, "layers"):  # gr.ImageEditor's EditorData
        drafts = component.blob_storage.get(payload.id) if payload.id is not None else None
        source = drafts if drafts is not None else payload
        parts = [source.background, source.composite, *(source.layers or [])]
    else:
        parts = [payload]
    for part in parts:
        if part is None:
            continue
        if isinstance(part, (bytes, bytearray, memoryview)):
            yield io.BytesIO(part)
        elif getattr(part, "url", None) and part.url.startswith("data:"):
            yield io.BytesIO(base64.b64decode(part.url.partition(",")[2], validate=False))
        elif getattr(part, "path", None) is not None:
            yield part.path


def readable_uploads(component, what: str):
    """Check every picture a component receives before Gradio decodes it; an unreadable one becomes a
    message on the page, not a traceback.

    Gradio opens uploads in the component's `preprocess`; this wraps that one instance's method
    (subclassing a component instead makes Gradio write a .pyi file beside this module). The editor's
    `accept_blobs` (drafts its page sends before an event) is checked the same way and keeps at most
    MAX_EDITOR_DRAFTS drafts.
    """
    decode = component.preprocess

    def preprocess(payload):
        for picture in carried_pictures(component, payload):
            check_pixels(picture, what)
        try:
            return decode(payload)
        except UNREADABLE:
            raise refuse(f"{what} {NOT_AN_IMAGE}") from None

    component.preprocess = preprocess
    if hasattr(component, "accept_blobs"):
        accept = component.accept_blobs

        def accept_blobs(data):
            for _, blob in data.files:
                check_pixels(io.BytesIO(blob), what)
            while len(component.blob_storage) >= MAX_EDITOR_DRAFTS:  # the oldest draft goes first
                component.blob_storage.pop(next(iter(component.blob_storage)))
            return accept(data)

        component.accept_blobs = functools.wraps(accept)(accept_blobs)
    return component


def to_model_image(image: Image.Image, model) -> tuple[torch.Tensor, list[str]]:
    """A PIL image -> uint8 (C, S, S) at the model's size, by the picture rules every reader shares
    (fractalgen.images: alpha over white, 16-bit scaled, ADM centre crop); also what was changed, in words."""
    notes: list[str] = []
    return model_image(image, model.config.channels, model.config.img_size, notes), notes


def to_model_mask(mask: Image.Image, size: int) -> torch.Tensor:
    """A mask picture (white or painted = regenerate) -> bool (S, S), True where the pixel is KNOWN.

    A mask of another size goes through the same centre crop as a picture of its size; a model pixel is
    regenerated when any part of it is covered, so a thin stroke still counts (fractalgen.images.fit_mask).
    """
    return known_pixels(mask, size)


def class_names(model) -> list[str] | None:
    """The model's class names, one per class, when it carries them (a run on a folder of class
    folders does); else None and classes are shown as numbers."""
    names = getattr(model, "class_names", None) or getattr(model.config, "class_names", None)
    if isinstance(names, dict):  # an id2label-style map
        names = [names.get(k, names.get(str(k))) for k in range(model.config.num_classes)]
    if (isinstance(names, (list, tuple)) and len(names) == model.config.num_classes
            and all(isinstance(n, str) and n for n in names)):
        return list(names)
    return None


def described(model) -> str:
    """What a model draws, in a few words: "28x28 gray, 10 classes (circle, cross ...)"."""
    c = model.config
    colour = "gray" if c.channels == 1 else "colour"
    k = c.num_classes
    names = class_names(model)
    classes = "unconditional" if not k else f"{k} classes" + (f": {', '.join(names)}" if names and k <= 20 else "")
    return f"{c.img_size}x{c.img_size} {colour}, {classes}"


def class_choices(model) -> list[tuple[str, int]]:
    """The class menu: unconditional, then each class by name (else by number)."""
    names = class_names(model) or [str(k) for k in range(model.config.num_classes)]
    return [("unconditional", -1)] + [(name, k) for k, name in enumerate(names)]


def class_name(model, label: int | None) -> str:
    if label is None:
        return "unconditional"
    names = class_names(model)
    return f"class {label} ({names[label]})" if names else f"class {label}"


def label_of(model, label) -> int | None:
    """-1 (or None) -> None, unconditional; otherwise a class the model knows (a number, or a name
    when the model carries class names)."""
    names = class_names(model) or []
    if isinstance(label, str) and label.strip() in names:
        return names.index(label.strip())
    label = -1 if label is None else integer_of(label, "the class")
    if label == -1:
        return None
    problem = label_problem(label, model.config.num_classes)
    if problem is not None:
        raise refuse(f"{problem}; -1 is unconditional" if model.config.num_classes else
                     "this model is unconditional: use class -1")
    return label


def number_of(value, name: str) -> float:
    """A number the page or a client sent; anything else is a message naming the field."""
    if value is None:
        raise refuse(f"{name} is missing")
    if isinstance(value, bool):
        raise refuse(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise refuse(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not np.isfinite(number):
        raise refuse(f"{name} must be a finite number, got {value!r}")
    return number


def integer_of(value, name: str) -> int:
    number = value if isinstance(value, int) and not isinstance(value, bool) else number_of(value, name)
    if number != int(number):
        raise refuse(f"{name} must be a whole number, got {value!r}")
    return int(number)


def checked_number(component, name: str, names: list[str] | None = None):
    """Make a non-numeric value a message naming the field, before the component converts it (Gradio's
    own conversion fails without a message). A class name from `names` stands for its number."""
    convert = component.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if names and isinstance(payload, str) and payload.strip() in names:
            return names.index(payload.strip())
        whole = getattr(component, "precision", None) == 0
        return convert(integer_of(payload, name) if whole else number_of(payload, name))

    component.preprocess = preprocess
    return component


def seed_of(value) -> int:
    return bounded(value, 0, SEED_MAX, "the seed")  # the library's and --seed's range


def bounded(value, low, high, name) -> int:
    value = integer_of(value, name)
    if not low <= value <= high:
        raise refuse(f"{name} must be between {low} and {high}, got {value}")
    return value


def settings(model, guidance=None, temperature=None) -> fractalgen.SamplingSettings:
    """What the page set, else the checkpoint's recommendation (fractalgen.resolve_settings)."""
    return fractalgen.resolve_settings(
        model, cfg=None if guidance is None else number_of(guidance, "the guidance"),
        temperature=None if temperature is None else number_of(temperature, "the temperature"))


def user_errors(fn):
    """Library errors (bad label, wrong shape ...) reach the page as messages."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, fractalgen.ConfigError, fractalgen.CheckpointError) as e:  # SettingsError too
            raise refuse(str(e)) from None
    return wrapper


# ---- per-pixel likelihood ---------------------------------------------------------------------------

def likelihood_map(model, image: torch.Tensor) -> Image.Image:
    """The image beside its per-pixel bits (fractalgen.pixel_bits: what the model and the codec spend on
    each value, in the order the model generates), with a colour bar in bits."""
    bits = fractalgen.pixel_bits(model, image[None])[0]
    scale = max(1, -(-DISPLAY_CELL * 2 // model.config.img_size))
    return heatmap_picture(image, bits, scale=scale)


def compared(size: int, other: int) -> str:
    """How `size` compares with `other`, as a factor over one: "1.43x smaller", "2.10x larger"."""
    if size == other:
        return "the same size"
    return f"{other / size:.2f}x smaller" if size < other else f"{size / other:.2f}x larger"


def png_bytes(image: Image.Image) -> int:
    """Size of the image as an optimised PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.tell()


# ---- the work behind each tab (plain functions of the model and the inputs) ----------------------------

class Demo:
    """The page's handlers, bound to the loaded models and a folder for the animations."""

    def __init__(self, models: Models, workdir: Path):
        self.models, self.workdir = models, workdir
        self.heldout: tuple[np.ndarray, np.ndarray] | None = None  # held-out digits, loaded on first use

    # -- Sample --
    def sample_api(self, label, seed, guidance=None, temperature=None):
        """One image at the model's size (the exact pixels)."""
        model = self.models.sampler
        labels = None if label_of(model, label) is None else [label_of(model, label)]
        images = fractalgen.sample(model, labels=labels, n=None if labels else 1, seed=seed_of(seed),
                                   settings=settings(model, guidance, temperature))
        return to_pil(images[0])

    def sample_page(self, label, count, guidance, temperature, seed):
        """A grid of `count` samples and the animation of their generation."""
        model = self.models.sampler
        count = bounded(count, 1, MAX_IMAGES, "the number of images")
        chosen = label_of(model, label)
        labels = None if chosen is None else [chosen] * count
        used = settings(model, guidance, temperature)
        nrow = min(count, 4)
        scale = max(1, -(-DISPLAY_CELL // model.config.img_size))
        recorder = GenerationRecorder(nrow, scale)  # one frame per level-0 step
        images = fractalgen.sample(model, labels=labels, n=None if labels else count, seed=seed_of(seed),
                                   on_step=recorder, settings=used)
        gif = Path(tempfile.mkdtemp(dir=self.workdir)) / "generation.gif"
        recorder.save(gif)
        what = "unconditional" if chosen is None else f"class {chosen}"
        caption = (f"{count} {what} sample(s), guidance {used.cfg:g} ({used.cfg_schedule}), "
                   f"temperature {used.temperature:g}, seed {seed_of(seed)}")
        return grid(images, nrow, padding=2, scale=scale), gif, caption

    # -- Inpaint --
    def inpaint_api(self, image, mask, label, seed, completions=1):
        """image, mask: file paths. The completions side by side at the model's size."""
        model = self.models.inpainter
        completions = bounded(completions, 1, MAX_COMPLETIONS, "completions")
        pixels, _ = to_model_image(open_bounded(image, "the image"), model)
        known = to_model_mask(open_bounded(mask, "the mask"), model.config.img_size)
        out = fractalgen.inpaint(model, pixels[None], known, labels=label_of(model, label), seed=seed_of(seed),
                                 n=completions)
        return to_pil(torch.cat(list(out), dim=-1))

    def inpaint_page(self, editor, label, completions, seed):
        """The editor's picture and painted layers -> a strip: the input (unknown tinted), the completions."""
        model = self.models.inpainter
        completions = bounded(completions, 1, MAX_COMPLETIONS, "completions")
        if not editor or editor.get("background") is None:
            raise refuse("no image: upload one or pick a held-out digit first")
        background = editor["background"]
        pixels, notes = to_model_image(background, model)
        painted = np.zeros((background.height, background.width), bool)
        for layer in editor.get("layers") or []:
            alpha = np.asarray(layer.convert("RGBA"))[..., 3]
            if alpha.shape != painted.shape:  # a layer the editor kept at another size: match the picture
                alpha = np.asarray(Image.fromarray(alpha).resize(background.size, Image.Resampling.BOX))
            painted |= alpha > 0
        if not painted.any():
            raise refuse("nothing painted: brush over the part to regenerate, or press a preset")
        known = to_model_mask(Image.fromarray(painted.astype(np.uint8) * 255), model.config.img_size)
        out = fractalgen.inpaint(model, pixels[None], known, labels=label_of(model, label), seed=seed_of(seed),
                                 n=completions)
        rgb = out.expand(-1, 3, -1, -1) if out.shape[1] == 1 else out  # one strip: all in colour
        strip = rows_figure([torch.cat([show_mask(pixels[None], known[None]), rgb])], min_cell=DISPLAY_CELL)
        unknown = int((~known).sum())
        notes.append(f"{unknown} of {known.numel()} pixels regenerated; every other pixel is the input's")
        return strip, "; ".join(notes)

    def preset_layer(self, editor, preset):
        """Paint a preset region (the part to regenerate) as the editor's layer."""
        model = self.models.inpainter
        if not editor or editor.get("background") is None:
            raise refuse("no image: upload one or pick a held-out digit first")
        background = editor["background"]
        w, h = background.size
        regenerate = np.zeros((h, w), bool)
        if preset == "lower half":
            regenerate[h // 2:] = True
        elif preset == "edit (lower three quarters)":
            regenerate[h // 4:] = True
        elif preset == "outpaint (keep the left half)":
            regenerate[:, w // 2:] = True
        elif preset == "uncrop (keep the centre)":
            s = model.config.img_size
            x0, y0, x1, y1 = centre_box(s)
            regenerate[:] = True
            regenerate[y0 * h // s:y1 * h // s, x0 * w // s:x1 * w // s] = False
        layer = np.zeros((h, w, 4), np.uint8)
        layer[regenerate] = (255, 48, 48, 160)
        return {"background": background, "layers": [Image.fromarray(layer, "RGBA")], "composite": None}

    def heldout_digit(self, index):
        """A held-out MNIST digit (never trained on) as a PIL image."""
        if self.heldout is None:
            self.heldout = mnist_split("val")
        images, labels = self.heldout
        index = bounded(index, 0, len(images) - 1, "the digit number")
        return Image.fromarray(images[index]), int(labels[index])

    def digit_for_editor(self, index, label):
        """The digit as the editor's picture, and a note saying which digit it is; the class menu
        keeps what the user chose (a digit turned into another class is the point of editing)."""
        digit, truth = self.heldout_digit(index)
        chosen = class_name(self.models.inpainter, label_of(self.models.inpainter, label))
        note = f"held-out digit {integer_of(index, 'the digit number')} loaded: a {truth}; regenerating as {chosen}"
        return {"background": digit, "layers": [], "composite": digit}, note

    # -- Likelihood --
    def likelihood_api(self, image):
        """bits/dim (what `fractalgen nll` reports for this image file) and the per-pixel map."""
        model = self.models.sampler
        pixels, _ = to_model_image(open_bounded(image), model)
        return self.bits_per_dim(model, pixels), likelihood_map(model, pixels)

    def likelihood_page(self, image):
        model = self.models.sampler
        pixels, notes = to_model_image(open_bounded(image), model)
        bpd = self.bits_per_dim(model, pixels)
        dims = pixels.numel()
        exact = "exact: AR levels" if set(model.config.kinds) == {"ar"} else "estimate: MAR levels"
        lines = [(f"**{bpd:.3f} bits/dim**: the model needs about {bpd * dims / 8:.0f} bytes for these "
                  f"{dims} values ({exact})")]
        png = png_bytes(cast(Image.Image, to_pil(pixels)))  # (C, S, S) -> one picture
        coded = len(fractalgen.compress(model, pixels[None]))  # a complete file: header and checksum included
        lines.append(f"compressed with the model (`fractalgen compress`): **{coded} bytes** as a complete file "
                     f"(header included), {compared(coded, png)} than the optimised PNG ({png} bytes)")
        if notes:
            lines.append("input: " + "; ".join(notes))
        return f"{bpd:.3f}", likelihood_map(model, pixels), "\n\n".join(lines)

    @staticmethod
    def bits_per_dim(model, pixels: torch.Tensor) -> float:
        """As `fractalgen nll` computes it: 1 pass for AR models, 4 random-mask passes (seed 0) for MAR."""
        passes = 1 if set(model.config.kinds) == {"ar"} else 4
        return float(fractalgen.nll_per_image(model, pixels[None].to(model.device), passes=passes,
                                              generator_seed=0).mean())


# ---- the page ------------------------------------------------------------------------------------------

THEME_FONTS = ["system-ui", "sans-serif"]  # system fonts: nothing to fetch


def build_app(models: Models, workdir: Path, workers: int = 1, queue_size: int = 4) -> gr.Blocks:
    demo_state = Demo(models, workdir)
    sampler, inpainter = models.sampler, models.inpainter

    def takes_digits(model):  # the held-out MNIST digits fit this model: offer them
        return model.config.img_size == 28 and model.config.channels == 1
    # Every model call shares one limit; outputs are lossless PNGs.
    busy: dict[str, Any] = {"concurrency_id": "model", "concurrency_limit": workers}
    shown: dict[str, Any] = {"format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}

    rec = settings(sampler)
    with gr.Blocks(title="fractalgen", analytics_enabled=False, delete_cache=(60, UPLOAD_LIFETIME)) as page:
        gr.Markdown(f"# fractalgen\nFractal generative models on your machine. Sampling and likelihood: "
                    f"`{models.sampler_name}` ({described(sampler)}); inpainting: `{models.inpainter_name}` "
                    f"({described(inpainter)}).")
        with gr.Tab("Sample"):
            gr.Markdown("Generate images of a class (or of no class in particular) and watch the outer model "
                        "fill the image patch by patch; inside each patch a smaller model of the same kind "
                        "draws the pixels.")
            with gr.Row():
                with gr.Column():
                    first_class = 0 if sampler.config.num_classes else -1
                    s_label = gr.Dropdown(class_choices(sampler), value=first_class,
                                          label="class")
                    s_count = checked_number(gr.Slider(1, MAX_IMAGES, value=4, step=1, label="how many images"),
                                             "the number of images")
                    s_cfg = checked_number(gr.Slider(1.0, 20.0, value=rec.cfg, step=0.5,
                                           label="guidance (higher: more typical of the class, less varied)"),
                                           "the guidance")
                    s_temp = checked_number(gr.Slider(0.5, 2.0, value=rec.temperature, step=0.05,
                                            label="temperature (multiplies the logits: higher is sharper)"),
                                            "the temperature")
                    s_seed = checked_number(gr.Number(0, precision=0, label="seed"), "the seed")
                    s_go = gr.Button("Generate", variant="primary", elem_id="sample-button")
                with gr.Column():
                    s_grid = gr.Image(label="samples", elem_id="sample-grid", **shown)
                    s_gif = gr.Image(label="how they were generated", **{**shown, "format": "gif"})
                    s_text = gr.Markdown()
            s_go.click(user_errors(demo_state.sample_page), [s_label, s_count, s_cfg, s_temp, s_seed],
                       [s_grid, s_gif, s_text], api_visibility="private", **busy)

        with gr.Tab("Inpaint / edit"):
            gr.Markdown("Paint over the part of the image to regenerate (the brush marks what is **replaced**); "
                        "every pixel you did not paint comes back unchanged. Choose a class to turn the "
                        "digit into another one, or keep it unconditional.")
            with gr.Row():
                with gr.Column():
                    brush = gr.Brush(colors=["#ff3030"], color_mode="fixed",
                                     default_size=max(1, inpainter.config.img_size // 14))
                    editor = readable_uploads(gr.ImageEditor(
                        type="pil", image_mode="RGBA", label="image: paint what to regenerate", brush=brush,
                        canvas_size=(inpainter.config.img_size,) * 2, transforms=(), format="png",
                        elem_id="inpaint-editor"), "the picture in the editor")
                    if takes_digits(inpainter):
                        with gr.Row():
                            i_index = checked_number(gr.Number(0, precision=0, label="held-out digit (0..499)"),
                                                     "the digit number")
                            i_pick = gr.Button("Load this digit")
                        i_note = gr.Markdown(elem_id="inpaint-note")
                    with gr.Row():
                        presets = [gr.Button(name, size="sm") for name in
                                   ("lower half", "edit (lower three quarters)", "outpaint (keep the left half)",
                                    "uncrop (keep the centre)")]
                    i_label = gr.Dropdown(class_choices(inpainter), value=-1, label="class",
                                          elem_id="inpaint-class")
                    i_count = checked_number(gr.Slider(1, MAX_COMPLETIONS, value=4, step=1, label="completions"),
                                             "completions")
                    i_seed = checked_number(gr.Number(0, precision=0, label="seed"), "the seed")
                    i_go = gr.Button("Regenerate", variant="primary", elem_id="inpaint-button")
                with gr.Column():
                    i_out = gr.Image(label="input (regenerated part tinted), then the completions",
                                     elem_id="inpaint-result", **shown)
                    i_text = gr.Markdown()
            if takes_digits(inpainter):
                i_pick.click(demo_state.digit_for_editor, [i_index, i_label], [editor, i_note],
                             api_visibility="private")
            for button in presets:
                button.click(demo_state.preset_layer, [editor, button], [editor], api_visibility="private")
            i_go.click(user_errors(demo_state.inpaint_page), [editor, i_label, i_count, i_seed], [i_out, i_text],
                       api_visibility="private", **busy)

        with gr.Tab("Likelihood"):
            gr.Markdown("How many bits the model needs for an image, and where: bright pixels surprised it. "
                        "Images are read as `fractalgen nll` reads image files.")
            with gr.Row():
                with gr.Column():
                    l_image = readable_uploads(gr.Image(type="filepath", label="image", format="png", height=260,
                                                        image_mode=None, elem_id="likelihood-image"),
                                               "the upload")
                    if takes_digits(sampler):
                        with gr.Row():
                            l_index = checked_number(gr.Number(0, precision=0, label="held-out digit (0..499)"),
                                                     "the digit number")
                            l_pick = gr.Button("Load this digit")
                    l_go = gr.Button("Measure", variant="primary", elem_id="likelihood-button")
                with gr.Column():
                    l_bpd = gr.Textbox("–", label="bits/dim", interactive=False, elem_id="likelihood-bpd")
                    l_map = gr.Image(label="bits per pixel", show_label=False, **shown)  # the picture says it
                    l_text = gr.Markdown()
            if takes_digits(sampler):
                l_pick.click(lambda i: demo_state.heldout_digit(i)[0], [l_index], [l_image],
                             api_visibility="private")
            l_go.click(user_errors(demo_state.likelihood_page), [l_image], [l_bpd, l_map, l_text],
                       api_visibility="private", **busy)

        # The named endpoints for gradio_client: their own (hidden) components, exact pixels in and out.
        with gr.Column(visible=False):
            a_label = checked_number(gr.Number(-1, precision=0, label="label"), "the label", class_names(sampler))
            a_seed = checked_number(gr.Number(0, precision=0, label="seed"), "the seed")
            a_cfg = checked_number(gr.Number(None, label="guidance"), "the guidance")
            a_temp = checked_number(gr.Number(None, label="temperature"), "the temperature")
            # image_mode=None: the file itself, not Gradio's RGB copy, reaches the picture reader
            a_image = readable_uploads(gr.Image(type="filepath", label="image", image_mode=None), "the image")
            a_mask = readable_uploads(gr.Image(type="filepath", label="mask", image_mode=None), "the mask")
            a_count = checked_number(gr.Number(1, precision=0, label="completions"), "completions")
            a_out = gr.Image(format="png", label="image")
            a_bpd = gr.Number(label="bits_per_dim")
            a_map = gr.Image(format="png", label="map")
            a_sample = gr.Button()
            a_inpaint = gr.Button()
            a_likelihood = gr.Button()
        a_sample.click(user_errors(demo_state.sample_api), [a_label, a_seed, a_cfg, a_temp], [a_out],
                       api_name="sample", **busy)
        a_inpaint.click(user_errors(demo_state.inpaint_api), [a_image, a_mask, a_label, a_seed, a_count], [a_out],
                        api_name="inpaint", **busy)
        a_likelihood.click(user_errors(demo_state.likelihood_api), [a_image], [a_bpd, a_map],
                           api_name="likelihood", **busy)
    page.queue(max_size=queue_size, default_concurrency_limit=workers)
    return page


# ---- the server's door: what it takes from the network -----------------------------------------------

MAX_STORED_FILES = 256  # uploads and results the server holds at once; more uploads wait for old ones to go
MAX_STORED_BYTES = 64 * 2**20
MAX_REQUEST_BYTES = 17 * 2**20  # one request's body: an upload of MAX_UPLOAD_SIZE and its form fields
UPLOAD_LIFETIME = 600  # seconds an upload or a result stays on the server
URL = re.compile(r"^\s*([a-z][a-z0-9+.-]*:|[/\\]{2})", re.IGNORECASE)  # a scheme, or //host


def refuse_foreign_files(page: gr.Blocks) -> None:
    """Refuse a file an event names but the client never uploaded: a URL where Gradio would fetch it
    (it downloads a file given by URL into the component's cache: Block.move_resource_to_block_cache
    and its async twin), and a path outside the uploads, which Gradio refuses with a traceback."""
    preprocess_data = page.preprocess_data

    async def preprocess_checked(*args, **kwargs):
        try:
            return await preprocess_data(*args, **kwargs)
        except InvalidPathError:
            raise refuse("a file this server was not sent: upload it first") from None

    # Wrapping this one instance's methods is deliberate (Gradio offers no hook for it): hence the ignores.
    page.preprocess_data = preprocess_checked  # type: ignore[method-assign]

    def checked(path) -> None:
        if path is not None and URL.match(str(path)):
            raise refuse("this server does not fetch URLs: upload the file itself")

    for block in page.blocks.values():
        move, move_async = block.move_resource_to_block_cache, block.async_move_resource_to_block_cache

        def move_checked(path, move=move):
            checked(path)
            return move(path)

        async def move_async_checked(path, move_async=move_async):
            checked(path)
            return await move_async(path)

        block.move_resource_to_block_cache = move_checked  # type: ignore[method-assign]
        block.async_move_resource_to_block_cache = move_async_checked  # type: ignore[method-assign]


def stored(folder: Path) -> tuple[int, int]:
    """(files, bytes) under the server's folder."""
    count = size = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                size += os.lstat(os.path.join(root, name)).st_size
                count += 1
            except OSError:  # removed meanwhile
                pass
    return count, size


class Door:
    """ASGI middleware in front of Gradio's routes: it refuses what the server must not do for a client.

    - `/file=<URL>` and `/proxy=<URL>`: Gradio would fetch the URL itself and stream it back.
    - a request body without a stated length or over MAX_REQUEST_BYTES;
    - an upload that would take the server's folder over MAX_STORED_FILES or MAX_STORED_BYTES
      (Blocks' delete_cache removes uploads and results after UPLOAD_LIFETIME).
    """

    def __init__(self, app, folder: Path):
        self.app, self.folder = app, Path(folder)

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        print(f"fractalgen serve: refused: {message}", file=sys.stderr, flush=True)
        await PlainTextResponse(message, status_code=status)(scope, receive, send)

    def refusal(self, scope) -> tuple[int, str] | None:
        path = scope["path"]  # percent-decoded
        for route in ("/file=", "/proxy="):
            _, found, target = path.partition(route)
            if found and (route == "/proxy=" or URL.match(target)):
                return 403, "this server does not fetch URLs for its clients"
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return None
        length = dict(scope["headers"]).get(b"content-length", b"")
        if not length.isdigit():
            return 411, "a request body must state its length (Content-Length)"
        if int(length) > MAX_REQUEST_BYTES:
            return 413, f"a request may carry at most {MAX_REQUEST_BYTES // 2**20} MB"
        if path.rstrip("/").endswith("/upload"):
            count, size = stored(self.folder)
            if count >= MAX_STORED_FILES or size + int(length) > MAX_STORED_BYTES:
                return 429, (f"upload quota reached ({count} files, {size / 2**20:.1f} MB held): older "
                             f"uploads are removed after {UPLOAD_LIFETIME // 60} minutes; try again then")
        return None


def check_address(host: str, port: int) -> None:
    """Fail before loading anything, in one line, when the page cannot listen at host:port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as e:
        raise UserError(f"cannot listen on --host {host!r}: {getattr(e, 'strerror', None) or e}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def theme():
    return gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"])


def serve(checkpoint: str | None = None, host: str = "127.0.0.1", port: int = 7860, preset: str | None = None,
          workers: int = 1, queue_size: int = 4, device=None, block: bool = True, folder: Path | None = None):
    """Load the models, build the page, serve it and print its local URL (returns the Blocks unless blocking).

    Everything the server stores (uploads, results, animations) lives in one temporary folder of its
    own (`folder`, else a new one), removed when it stops (Ctrl-C, SIGTERM, or the process's exit).
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # besides Blocks(analytics_enabled=False): launch reads it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    workdir = Path(folder or tempfile.mkdtemp(prefix="fractalgen-serve-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = str(workdir / "files")  # read by Gradio's blocks and routes as they are made
    check_address(host, port)
    Image.MAX_IMAGE_PIXELS = MAX_UPLOAD_PIXELS  # Pillow's own backstop, behind check_pixels
    models = load_models(checkpoint, preset, device)
    page = build_app(models, workdir, workers=workers, queue_size=queue_size)
    refuse_foreign_files(page)
    try:
        page.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
                    max_file_size=MAX_UPLOAD_SIZE, quiet=True, prevent_thread_lock=True, theme=theme(),
                    footer_links=["api"], ssr_mode=False, mcp_server=False,
                    app_kwargs={"middleware": [Middleware(Door, folder=workdir)]})
    except OSError as e:  # the address was taken between check_address and now
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"fractalgen serve: running on {page.local_url}  (Ctrl-C stops it)", flush=True)
    if block:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop_on_sigterm)
        try:
            page.block_thread()
        finally:
            page.close()
            shutil.rmtree(workdir, ignore_errors=True)
    return page


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # block_thread stops the server on it, as on Ctrl-C
