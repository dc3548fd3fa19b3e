"""The one picture reader (fractalgen.images): its rules, and the proof that the same picture and mask
reach the model as the same tensors through `fractalgen inpaint`, the web page's /inpaint and the library."""
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import fractalgen
from fractalgen import images
from fractalgen.cli import main
from fractalgen.config import ModelConfig
from fractalgen.errors import UserError
from fractalgen.model import FractalModel

torch.set_num_threads(1)


def tiny(channels: int) -> FractalModel:
    config = ModelConfig(img_sizes=(8, 4, 1), widths=(16, 16, 16), blocks=(1, 1, 1), heads=(2, 2, 2),
                         kinds=("mar", "ar"), channels=channels, num_classes=10, num_conds=5,
                         pixel_mean=(0.5,) * channels, pixel_std=(0.5,) * channels)
    torch.manual_seed(0)
    return fractalgen.build(config)


# ---- pictures whose reading differed between the readers before there was one ----------------------

def rgba(rng):
    """Odd-sized colour with an alpha ramp: dropped alpha and alpha over white differ."""
    array = rng.integers(0, 256, (23, 37, 4), dtype=np.uint8)
    array[..., 3] = np.linspace(0, 255, 37, dtype=np.uint8)[None]
    return Image.fromarray(array, "RGBA")


def sixteen_bit(rng):
    """A 16-bit gray picture, taller than wide: clipped and scaled values differ."""
    return Image.fromarray(rng.integers(0, 65536, (30, 19)).astype(np.uint16))


def palette(rng):
    """A palette picture with a transparent entry, larger than the model (box halvings, then bicubic)."""
    picture = Image.fromarray(rng.integers(0, 256, (41, 44, 3), dtype=np.uint8)).quantize(16)
    picture.info["transparency"] = 3
    return picture


def cmyk(rng):
    return Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).convert("CMYK")


PICTURES = {"rgba": rgba, "16-bit": sixteen_bit, "palette": palette, "cmyk": cmyk}


def saved(picture: Image.Image, path):
    picture.save(path, format="TIFF" if picture.mode == "CMYK" else "PNG",
                 **({"transparency": picture.info["transparency"]} if "transparency" in picture.info else {}))
    return path


def hand_mask(width: int, height: int):
    """White = regenerate: a thin stroke and a block, at the picture's size."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 3, :] = 255
    mask[height // 2:, width // 4:width // 2 + 1] = 255
    return Image.fromarray(mask)


# ---- the same tensors through the command line, the web page and the library -----------------------

@pytest.fixture
def model_inputs(monkeypatch):
    """Every call of the model's generator records the pixels and mask it was given (and returns them)."""
    seen = []

    def capture(self, *args, known=None, **kwargs):
        seen.append((known.values.cpu().clone(), known.mask.cpu().clone()))
        return known.values, None

    monkeypatch.setattr(FractalModel, "generate", capture)
    return seen


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", list(PICTURES))
def test_cli_web_and_library_give_the_model_the_same_tensors(tmp_path, model_inputs, kind, channels):
    model = tiny(channels)
    checkpoint = tmp_path / "model.safetensors"
    fractalgen.save(model, checkpoint)
    picture = PICTURES[kind](np.random.default_rng(channels))
    image = saved(picture, tmp_path / f"{kind}.{'tif' if kind == 'cmyk' else 'png'}")
    mask = saved(hand_mask(*picture.size), tmp_path / "mask.png")

    assert main(["inpaint", "--checkpoint", str(checkpoint), "--image", str(image), "--mask", str(mask),
                 "--out", str(tmp_path / "out")]) == 0
    pixels, notes = images.read_image(image, model)
    fractalgen.inpaint(model, pixels[None], images.read_mask(mask, model))
    routes = ["cli", "library"]
    try:
        from fractalgen.cli import web as app
    except ImportError:  # gradio is an extra
        app = None
    if app is not None:
        demo = app.Demo(app.Models(model, model, "tiny", "tiny"), tmp_path)
        demo.inpaint_api(str(image), str(mask), -1, 0)
        routes.append("web")
    assert len(model_inputs) == len(routes)
    (values, known), *others = model_inputs
    assert values.shape == (1, channels, 8, 8) and known.shape == values.shape
    assert not known.all() and known.any()
    for route, (other_values, other_known) in zip(routes[1:], others, strict=True):
        assert torch.equal(other_values, values), route
        assert torch.equal(other_known, known), route
    assert torch.equal(values[0].round().to(torch.uint8), pixels)
    assert any("resized" in note for note in notes)


def test_the_web_endpoints_pass_the_uploaded_file_itself(tmp_path):
    """Gradio's Image converts uploads to RGB unless told otherwise: the named endpoints must hand the
    reader the file as uploaded (a transparent or 16-bit picture would otherwise differ from the CLI's)."""
    pytest.importorskip("gradio")
    from gradio.data_classes import ImageData

    from fractalgen.cli import web as app

    model = tiny(1)
    page = app.build_app(app.Models(model, model, "tiny", "tiny"), tmp_path)
    path = saved(sixteen_bit(np.random.default_rng(0)), tmp_path / "deep.png")
    uploads = [block for block in page.blocks.values()
               if type(block).__name__ == "Image" and getattr(block, "type", None) == "filepath"]
    assert len(uploads) >= 3  # the likelihood tab's, and the endpoints' image and mask
    for block in uploads:
        assert block.preprocess(ImageData(path=str(path), orig_name="deep.png")) == str(path), block.label


# ---- the rules ---------------------------------------------------------------------------------------

def test_transparent_pixels_are_laid_over_white():
    clear = Image.new("RGBA", (8, 8), (200, 0, 0, 0))
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    for channels in (1, 3):
        notes = []
        assert int(images.model_image(clear, channels, 8, notes).min()) == 255
        assert notes == ["transparent pixels laid over white"]
        assert int(images.model_image(half, channels, 8).float().mean()) == 127  # 255 * (1 - 128/255)
    la = Image.new("LA", (8, 8), (0, 0))
    assert int(images.model_image(la, 1, 8).min()) == 255


def test_sixteen_bit_values_are_scaled_not_clipped():
    deep = Image.fromarray(np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16))
    notes = []
    assert images.model_image(deep, 1, 2, notes)[0].tolist() == [[0, 100], [255, 7]]
    assert notes == ["16-bit values (I;16) scaled to 8 bits"]
    shallow = Image.fromarray(np.array([[0, 100], [200, 7]], dtype=np.uint16))  # values all fit 8 bits
    assert images.model_image(shallow, 1, 2)[0].tolist() == [[0, 100], [200, 7]]


def test_palette_cmyk_and_colour_to_gray():
    colour = Image.new("RGB", (4, 4), (200, 30, 30))
    notes = []
    gray = images.model_image(colour, 1, 4, notes)
    assert gray.shape == (1, 4, 4) and int(gray[0, 0, 0]) == round(0.299 * 200 + 0.587 * 30 + 0.114 * 30)
    assert notes == ["a colour image (RGB), made grayscale for this grayscale model"]
    notes = []
    images.model_image(Image.new("RGB", (4, 4), (9, 9, 9)), 1, 4, notes)
    assert notes == []  # gray pixels in an RGB file: nothing to say
    assert images.model_image(colour.quantize(4), 3, 4)[:, 0, 0].tolist() == [200, 30, 30]
    cmyk_picture = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in ink
    assert images.model_image(cmyk_picture, 3, 4)[:, 0, 0].tolist() == [255, 0, 0]
    notes = []
    assert images.model_image(Image.new("L", (4, 4), 5), 3, 4, notes).shape == (3, 4, 4)
    assert notes == ["grayscale (L), repeated into RGB for this colour model"]
    with pytest.raises(UserError, match="1- or 3-channel"):
        images.model_image(colour, 2, 4)


def test_other_sizes_are_resized_and_centre_cropped():
    """The ADM crop: the shorter side resized to the model's, the centre square kept."""
    wide = np.zeros((8, 12), np.uint8)
    wide[:, 2:10] = 255  # the centre 8 columns white
    notes = []
    fitted = images.model_image(Image.fromarray(wide), 1, 8, notes)
    assert (fitted == 255).all()  # same height: no resampling, the centre columns 2..9
    assert notes == ["12x8, resized (shorter side to 8) and centre-cropped to 8x8 (the model's size)"]
    assert images.source_box(12, 8, 8) == (2.0, 0.0, 10.0, 8.0)
    large = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 64), dtype=np.uint8))
    assert images.model_image(large, 1, 16).shape == (1, 16, 16)
    x0, y0, x1, y1 = images.source_box(64, 100, 16)
    # The centre square, to within one pixel of the halved picture (64x100 -> 16x25: 4 input pixels each).
    assert (x0, x1) == (0, 64) and y1 - y0 == 64 and abs((y0 + y1) / 2 - 50) <= 4
    assert images.model_image(Image.new("L", (3, 5), 9), 1, 8).shape == (1, 8, 8)  # smaller: enlarged


def test_a_mask_follows_its_picture_through_the_crop():
    """A picture and a mask of the same marks, fitted each by its rule: wherever the fitted picture is
    bright, the fitted mask is marked; and a stroke thinner than a model pixel still marks it."""
    rng = np.random.default_rng(0)
    for width, height, size in [(70, 45, 8), (13, 29, 8), (100, 19, 16), (300, 40, 8), (5, 3, 8)]:
        marks = np.zeros((height, width), bool)
        for _ in range(3):
            x, y = rng.integers(0, width), rng.integers(0, height)
            marks[y:y + max(1, height // 5), x:x + max(1, width // 5)] = True
        fitted = np.asarray(images.fit_picture(Image.fromarray(marks.astype(np.uint8) * 255), size))
        mask = images.fit_mask(marks, size)
        assert mask.shape == (size, size)
        assert mask[fitted > 128].all(), (width, height)
    stroke = np.zeros((280, 280), bool)
    stroke[150, :] = True  # one input row of ten per model row
    mask = images.fit_mask(stroke, 28)
    assert mask[15].all() and mask.sum() == 28
    same = rng.random((8, 8)) < 0.5
    assert np.array_equal(images.fit_mask(same, 8), same)  # the model's size: as given


def test_mask_pictures_are_read_as_pictures():
    """White (>= 128 after the channel rule) marks a pixel to regenerate; transparent is white."""
    mask = np.zeros((4, 4, 4), np.uint8)
    mask[0, :] = (255, 255, 255, 255)
    mask[1, :] = (0, 0, 0, 0)  # transparent: laid over white
    mask[2, :] = (128, 128, 128, 255)
    mask[3, :] = (127, 127, 127, 255)
    assert images.marked(Image.fromarray(mask, "RGBA"))[:, 0].tolist() == [True, True, True, False]
    known = images.known_pixels(Image.fromarray(mask, "RGBA"), 4)
    assert known.dtype == torch.bool and known[:, 0].tolist() == [False, False, False, True]


def huge_png(side: int) -> bytes:
    """A valid all-black 1-bit PNG of side x side pixels in a few kilobytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((side + 7) // 8)
    body = zlib.compress(row * side, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_the_pixel_bound_is_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png(20000))  # 400M pixels declared, a few KB on disk
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(images.PictureTooLarge, match="huge.png"):
        images.open_picture(path)  # Pillow's own bound (twice MAX_IMAGE_PIXELS)
    small = tmp_path / "small.png"
    Image.new("L", (30, 20)).save(small)
    with pytest.raises(images.PictureTooLarge, match=r"is 30x20; pictures are read up to 500 pixels") as e:
        images.open_picture(small, max_pixels=500)
    assert e.value.size == (30, 20) and decoded == []
    assert images.header(small) == (30, 20, "L")


def test_animations_are_refused_unless_a_folder_reads_their_first_frame(tmp_path):
    frames = [Image.new("L", (8, 8), value) for value in (10, 200, 90)]
    path = tmp_path / "moving.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    with pytest.raises(images.AnimatedPicture, match="moving.gif has 3 frames"):
        images.open_picture(path)
    first = images.open_picture(path, first_frame=True)
    assert int(np.asarray(first.convert("L")).mean()) == 10
    pages = tmp_path / "pages.tif"
    frames[0].save(pages, save_all=True, append_images=frames[1:])
    with pytest.raises(images.AnimatedPicture):
        images.open_picture(pages)


def test_unreadable_files_are_one_line_user_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not a picture")
    cases = {tmp_path / "missing.png": "image not found: ", tmp_path / "empty.png": "cannot read image ",
             tmp_path / "text.png": "cannot read image "}
    for path, message in cases.items():
        with pytest.raises(UserError) as e:
            images.open_picture(path)
        assert str(e.value).startswith(message) and "\n" not in str(e.value)
    with pytest.raises(images.PictureError, match="^cannot read mask: "):
        images.open_picture(io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), "mask")


def test_the_codec_takes_pictures_exactly_as_they_are():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    assert np.array_equal(images.exact_image(gray, 1, 8, "g.png")[0], np.asarray(gray))
    assert np.array_equal(images.exact_image(gray.convert("RGB"), 1, 8, "g.png")[0], np.asarray(gray))
    refused = {
        "transparent pixels": (Image.new("RGBA", (8, 8), (0, 0, 0, 10)), 3),
        "is 9x8": (Image.new("L", (9, 8)), 1),
        "is in colour": (Image.new("RGB", (8, 8), (1, 2, 3)), 1),
        "not 8-bit": (Image.new("I;16", (8, 8)), 1),
    }
    for message, (picture, channels) in refused.items():
        with pytest.raises(images.PictureError, match=message):
            images.exact_image(picture, channels, 8, "x.png")


def test_old_names_still_import_with_a_warning():
    with pytest.warns(DeprecationWarning, match="fractalgen.images"):
        from fractalgen.data import center_crop_adm
    assert center_crop_adm is images.fit_picture
