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

import functools
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

import fractalgen

from .checkpoint import BUNDLED, DEFAULT_INPAINT_CHECKPOINT
from .conditional import centre_box
from .data import center_crop_adm, mnist_split, pil_mode, to_pil_mode
from .errors import UserError
from .files import grid, to_pil
from .heatmap import heatmap_picture
from .visualize import GenerationRecorder, rows_figure, show_mask

# ---- limits: what one request may cost ----------------------------------------------------------

MAX_IMAGES = 16  # samples per request on the Sample tab
MAX_COMPLETIONS = 8  # completions per request on the Inpaint tab
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger pictures are refused before they are decoded
MAX_UPLOAD_SIZE = "16mb"  # Gradio refuses larger files at upload time
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


def readable_uploads(component, what: str):
    """Make an upload the component cannot decode a message on the page, not a traceback.

    Gradio opens uploads in the component's `preprocess`; this wraps that one instance's method
    (subclassing a component instead makes Gradio write a .pyi file beside this module).
    """
    decode = component.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except UNREADABLE:
            raise gr.Error(f"{what} is not an image this page can read (PNG, JPEG, WebP, BMP ...)") from None

    component.preprocess = preprocess
    return component


def open_bounded(path) -> Image.Image:
    """Open an uploaded file, refusing anything that is not an image or has too many pixels."""
    if path is None:
        raise gr.Error("no image: upload one (or pick a held-out digit) first")
    try:
        with Image.open(path) as image:
            width, height = image.size  # from the header: nothing decoded yet
            if width * height <= MAX_UPLOAD_PIXELS:
                image.load()
                return image.copy()
    except UNREADABLE as e:
        raise gr.Error(f"cannot read the upload as an image ({type(e).__name__})") from None
    raise gr.Error(f"the image is {width}x{height}; this page takes at most {MAX_UPLOAD_PIXELS:,} pixels")


def to_model_image(image: Image.Image, model) -> tuple[torch.Tensor, list[str]]:
    """A PIL image -> uint8 (C, S, S) at the model's size, read as `fractalgen nll` reads image files
    (alpha over white, odd modes converted, ADM centre crop); also what was changed, in words."""
    c, s = model.config.channels, model.config.img_size
    notes = []
    if c == 1 and image.mode in ("RGB", "RGBA", "P", "CMYK"):
        rgb = np.asarray(image.convert("RGB"))
        if (rgb != rgb[..., :1]).any():
            notes.append("colours converted to gray (the model is grayscale)")
    if "A" in image.getbands() and image.getextrema()[-1][0] < 255:
        notes.append("transparent pixels taken as white")
    image = to_pil_mode(image, pil_mode(c))
    if image.size != (s, s):
        notes.append(f"resized from {image.width}x{image.height} to {s}x{s} (centre crop)")
        image = center_crop_adm(image, s)
    array = np.asarray(image, dtype=np.uint8).reshape(s, s, c)
    return torch.from_numpy(array.copy()).permute(2, 0, 1), notes


def to_model_mask(mask: Image.Image, size: int) -> torch.Tensor:
    """A mask picture (white or painted = regenerate) -> bool (S, S), True where the pixel is KNOWN.

    A mask of another size goes through the same centre crop as the image; a model pixel is
    regenerated when any part of it is covered (box filter > 0), so a thin stroke still counts.
    """
    covered = np.asarray(mask.convert("L"), dtype=np.uint8) >= 128
    picture = Image.fromarray(covered.astype(np.uint8) * 255)
    if picture.size != (size, size):
        side = min(picture.size)
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        picture = picture.crop((left, top, left + side, top + side)).resize((size, size), Image.BOX)
    return torch.from_numpy(np.asarray(picture) == 0)


def label_of(model, label) -> int | None:
    """-1 (or None) -> None, unconditional; otherwise a class the model knows."""
    label = -1 if label is None else int(label)
    if label == -1:
        return None
    k = model.config.num_classes
    if not 0 <= label < k:
        raise gr.Error(f"class {label} is out of range: this model has {k} classes (0..{k - 1}); "
                       f"-1 is unconditional" if k else "this model is unconditional: use class -1")
    return label


def seed_of(value) -> int:
    return bounded(value, 0, 2**63 - 1, "the seed")


def bounded(value, low, high, name) -> int:
    if value is None:
        raise gr.Error(f"{name} is missing")
    value = int(value)
    if not low <= value <= high:
        raise gr.Error(f"{name} must be between {low} and {high}, got {value}")
    return value


def settings(model, guidance=None, temperature=None) -> fractalgen.SamplingSettings:
    """What the page set, else the checkpoint's recommendation (fractalgen.resolve_settings)."""
    return fractalgen.resolve_settings(model, cfg=None if guidance is None else float(guidance),
                                       temperature=None if temperature is None else float(temperature))


def user_errors(fn):
    """Library errors (bad label, wrong shape ...) reach the page as messages."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, fractalgen.ConfigError, fractalgen.CheckpointError) as e:  # SettingsError too
            raise gr.Error(str(e)) from None
    return wrapper


# ---- per-pixel likelihood ---------------------------------------------------------------------------

def likelihood_map(model, image: torch.Tensor) -> Image.Image:
    """The image beside its per-pixel bits (fractalgen.pixel_bits: what the model and the codec spend on
    each value, in the order the model generates), with a colour bar in bits."""
    bits = fractalgen.pixel_bits(model, image[None])[0]
    scale = max(1, -(-DISPLAY_CELL * 2 // model.config.img_size))
    return heatmap_picture(image, bits, scale=scale)


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
        self.heldout = None  # held-out digits, loaded on first use

    # -- Sample --
    def sample_api(self, label, seed, guidance=None, temperature=None):
        """One image at the model's size (the exact pixels)."""
        model = self.models.sampler
        labels = None if label_of(model, label) is None else [label_of(model, label)]
        images = fractalgen.sample(model, labels=labels, n=None if labels else 1, seed=seed_of(seed),
                                   **settings(model, guidance, temperature).to_dict())
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
                                   on_step=recorder, **used.to_dict())
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
        pixels, _ = to_model_image(open_bounded(image), model)
        known = to_model_mask(open_bounded(mask), model.config.img_size)
        out = fractalgen.inpaint(model, pixels[None], known, labels=label_of(model, label), seed=seed_of(seed),
                                 samples=completions)
        return to_pil(torch.cat(list(out), dim=-1))

    def inpaint_page(self, editor, label, completions, seed):
        """The editor's picture and painted layers -> a strip: the input (unknown tinted), the completions."""
        model = self.models.inpainter
        completions = bounded(completions, 1, MAX_COMPLETIONS, "completions")
        if not editor or editor.get("background") is None:
            raise gr.Error("no image: upload one or pick a held-out digit first")
        background = editor["background"]
        pixels, notes = to_model_image(background, model)
        painted = np.zeros((background.height, background.width), bool)
        for layer in editor.get("layers") or []:
            alpha = np.asarray(layer.convert("RGBA"))[..., 3]
            if alpha.shape != painted.shape:  # a layer the editor kept at another size: match the picture
                alpha = np.asarray(Image.fromarray(alpha).resize(background.size, Image.BOX))
            painted |= alpha > 0
        if not painted.any():
            raise gr.Error("nothing painted: brush over the part to regenerate, or press a preset")
        known = to_model_mask(Image.fromarray(painted.astype(np.uint8) * 255), model.config.img_size)
        out = fractalgen.inpaint(model, pixels[None], known, labels=label_of(model, label), seed=seed_of(seed),
                                 samples=completions)
        rgb = out.expand(-1, 3, -1, -1) if out.shape[1] == 1 else out  # one strip: all in colour
        strip = rows_figure([torch.cat([show_mask(pixels[None], known[None]), rgb])], min_cell=DISPLAY_CELL)
        unknown = int((~known).sum())
        notes.append(f"{unknown} of {known.numel()} pixels regenerated; every other pixel is the input's")
        return strip, "; ".join(notes)

    def preset_layer(self, editor, preset):
        """Paint a preset region (the part to regenerate) as the editor's layer."""
        model = self.models.inpainter
        if not editor or editor.get("background") is None:
            raise gr.Error("no image: upload one or pick a held-out digit first")
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

    def digit_for_editor(self, index):
        digit, label = self.heldout_digit(index)
        return {"background": digit, "layers": [], "composite": digit}, label

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
        lines = [(f"**{bpd:.4f} bits/dim**: the model needs about {bpd * dims / 8:.0f} bytes for these "
                  f"{dims} values ({exact})")]
        png = png_bytes(to_pil(pixels))
        coded = len(fractalgen.compress(model, pixels[None]))  # a complete file: header and checksum included
        lines.append(f"compressed with the model (`fractalgen compress`): **{coded} bytes** as a complete file "
                     f"(header included); optimised PNG: {png} bytes ({png / coded:.1f}x larger)")
        if notes:
            lines.append("input " + "; ".join(notes))
        return bpd, likelihood_map(model, pixels), "\n\n".join(lines)

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
    busy = {"concurrency_id": "model", "concurrency_limit": workers}  # every model call shares one limit
    shown = {"format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}  # outputs: lossless

    def class_choices(model):
        return [("unconditional", -1)] + [(str(k), k) for k in range(model.config.num_classes)]

    rec = settings(sampler)
    with gr.Blocks(title="fractalgen", analytics_enabled=False) as page:
        gr.Markdown(f"# fractalgen\nFractal generative models on your machine. Sampling and likelihood: "
                    f"`{models.sampler_name}`; inpainting: `{models.inpainter_name}`.")
        with gr.Tab("Sample"):
            gr.Markdown("Generate images of a class (or of no class in particular) and watch the outer model "
                        "fill the image patch by patch; inside each patch a smaller model of the same kind "
                        "draws the pixels.")
            with gr.Row():
                with gr.Column():
                    first_class = 0 if sampler.config.num_classes else -1
                    s_label = gr.Dropdown(class_choices(sampler), value=first_class,
                                          label="class")
                    s_count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="how many images")
                    s_cfg = gr.Slider(1.0, 20.0, value=rec.cfg, step=0.5,
                                      label="guidance (higher: more typical of the class, less varied)")
                    s_temp = gr.Slider(0.5, 2.0, value=rec.temperature, step=0.05,
                                       label="temperature (multiplies the logits: higher is sharper)")
                    s_seed = gr.Number(0, precision=0, label="seed")
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
                            i_index = gr.Number(0, precision=0, label="held-out digit (0..499)")
                            i_pick = gr.Button("Load this digit")
                    with gr.Row():
                        presets = [gr.Button(name, size="sm") for name in
                                   ("lower half", "edit (lower three quarters)", "outpaint (keep the left half)",
                                    "uncrop (keep the centre)")]
                    i_label = gr.Dropdown(class_choices(inpainter), value=-1, label="class",
                                          elem_id="inpaint-class")
                    i_count = gr.Slider(1, MAX_COMPLETIONS, value=4, step=1, label="completions")
                    i_seed = gr.Number(0, precision=0, label="seed")
                    i_go = gr.Button("Regenerate", variant="primary", elem_id="inpaint-button")
                with gr.Column():
                    i_out = gr.Image(label="input (regenerated part tinted), then the completions",
                                     elem_id="inpaint-result", **shown)
                    i_text = gr.Markdown()
            if takes_digits(inpainter):
                i_pick.click(demo_state.digit_for_editor, [i_index], [editor, i_label],
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
                                                        elem_id="likelihood-image"), "the upload")
                    if takes_digits(sampler):
                        with gr.Row():
                            l_index = gr.Number(0, precision=0, label="held-out digit (0..499)")
                            l_pick = gr.Button("Load this digit")
                    l_go = gr.Button("Measure", variant="primary", elem_id="likelihood-button")
                with gr.Column():
                    l_bpd = gr.Number(label="bits/dim", interactive=False)
                    l_map = gr.Image(label="bits per pixel", show_label=False, **shown)  # the picture says it
                    l_text = gr.Markdown()
            if takes_digits(sampler):
                l_pick.click(lambda i: demo_state.heldout_digit(i)[0], [l_index], [l_image],
                             api_visibility="private")
            l_go.click(user_errors(demo_state.likelihood_page), [l_image], [l_bpd, l_map, l_text],
                       api_visibility="private", **busy)

        # The named endpoints for gradio_client: their own (hidden) components, exact pixels in and out.
        with gr.Column(visible=False):
            a_label = gr.Number(-1, precision=0, label="label")
            a_seed = gr.Number(0, precision=0, label="seed")
            a_cfg = gr.Number(None, label="guidance")
            a_temp = gr.Number(None, label="temperature")
            a_image = readable_uploads(gr.Image(type="filepath", label="image"), "the image")
            a_mask = readable_uploads(gr.Image(type="filepath", label="mask"), "the mask")
            a_count = gr.Number(1, precision=0, label="completions")
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


def theme():
    return gr.themes.Default(font=THEME_FONTS, font_mono=["ui-monospace", "monospace"])


def serve(checkpoint: str | None = None, host: str = "127.0.0.1", port: int = 7860, preset: str | None = None,
          workers: int = 1, queue_size: int = 4, device=None, block: bool = True):
    """Load the models, build the page, serve it and print its local URL (returns the Blocks unless blocking)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # besides Blocks(analytics_enabled=False): launch reads it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    models = load_models(checkpoint, preset, device)
    workdir = Path(tempfile.mkdtemp(prefix="fractalgen-serve-"))
    page = build_app(models, workdir, workers=workers, queue_size=queue_size)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, show_error=False,
                max_file_size=MAX_UPLOAD_SIZE, quiet=True, prevent_thread_lock=True, theme=theme(),
                footer_links=["api"], ssr_mode=False, mcp_server=False)
    print(f"fractalgen serve: running on {page.local_url}  (Ctrl-C stops it)", flush=True)
    if block:
        try:
            page.block_thread()
        finally:
            page.close()
    return page
