"""Lossless image compression with the model's own conditional distributions (range coding).

An image costs its code length, -log2 p(x) under the model, plus a few bytes. The sampler is
the model: it visits every value in generation order and computes its distribution from what
came before. Coding reuses it unchanged: a `ValueCoder` (sampling.py) takes the place of the
random draw, so the encoder (which takes the image's value and writes it to the stream), the
decoder (which reads the value from the stream) and `pixel_bits` run one computation.

A file decodes on any machine, because the probabilities are a function of the model and the
decoded prefix alone:
- The coding pass runs a float64 copy of the model. Kernels that differ between machines (SIMD
  level, BLAS, thread count, batch size, CPU or GPU) then move a logit by rounding error only.
- Each logit is rounded to a grid of 2^-GRID_BITS. After that, integer arithmetic alone makes the
  frequencies: a table of exp on the grid (`exp_table`, built with Python's `decimal`, the same
  everywhere) weighs each value by exp(rounded logit - largest), and the range coder
  (`constriction`, a maintained Rust library) quantises weight/total to its integer frequencies.
- Rounding is the one step where another machine could decide differently: for a logit within
  MARGIN of a rounding boundary the encoder records which way it rounded (a hint), and the
  decoder follows the hint. A machine whose float64 logits differ from the encoder's by less
  than MARGIN decodes exactly; a checksum of the pixels is the last line of defence.
- MAR levels generate one token per step in `sampling.coding_order`, a fixed permutation.
- Images are coded IMAGES_PER_STREAM side by side into independent streams, so a decoder runs any
  number of streams side by side: its batch size changes the speed, never the probabilities.

File layout, format version 2 (little-endian), HEADER.size = 48 bytes:
  magic "FGLC" | version u8 = 2 | flags u8 (bit 0: labels stored, bit 1: names stored)
  | model fingerprint 8 bytes | count u32 | channels u8 | height u16 | width u16
  | images per stream u32 | grid bits u8 | pixel checksum 8 bytes | payload bytes u32
  | payload crc32 u32 | header crc32 u32
then the payload: the number of hints (varint), each hint as four varints (stream, step, row,
2 * logit index + rounded up), the length in 32-bit words of each stream (varint), and the streams'
words. A stream holds its images' labels (uniform over the classes, if stored) and then every value
in generation order, the stream's images side by side. With flag bit 1, the names index follows the
payload: each image's name as its length in bytes (varint) and its UTF-8 bytes, in image order, then
the index's crc32 u32. A name is a portable relative path (`name_problem`). Without the flag the file
ends with the payload. Version 1 files (one stream coded in the
encoder's batch layout in float32 on one thread; HEADER_V1.size = 47 bytes) still decode where
they decoded before.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import struct
import unicodedata
import zlib
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any

import constriction
import numpy as np
import torch

from .errors import UserError
from .model import FractalModel, as_labels, check_labels, eval_mode
from .runtime import uses_threads
from .sampling import Known, ValueCoder
from .settings import SamplingSettings

MAGIC = b"FGLC"
VERSION = 2
FLAG_LABELS = 1
FLAG_NAMES = 2
HEADER = struct.Struct("<4sBB8sIBHHIB8sIII")
HEADER_V1 = struct.Struct("<4sBB8sIBHHI8sIII")
DEFAULT_BATCH = 512  # images decoded side by side: one sampler pass serves them all
IMAGES_PER_STREAM = 16  # a stream's end costs about two bytes: 16 digits share it
MAX_IMAGES_PER_STREAM = 4096
GRID_BITS = 8  # logits are rounded to multiples of 2^-8
MARGIN = 2.0**-30  # a logit this close to a rounding boundary gets a hint (about 1e-9)
WEIGHT_BITS = 32  # exp_table's precision: weight(0) = 2^32
# The range coder quantises probabilities to 24 bits and gives each of a value's 256 outcomes at least
# 2^-24, so no value costs less than this; a header's count is bounded by what its payload can hold.
MIN_BITS_PER_VALUE = -math.log2(1 - 255 * 2.0**-24)
STATE_BITS = 64  # what a stream's coder state may hold beyond its words
ORDER_SEED = 0  # format version 1: MAR levels' random generation order
MAX_NAME_BYTES = 1024  # a stored name, in UTF-8
MAX_PART_BYTES = 255  # one folder or file name within it: what common file systems hold


class CodecError(UserError, ValueError):
    """A compressed stream that cannot be decoded here: damaged, truncated, foreign or from another model."""


@dataclass(frozen=True)
class Header:
    version: int
    has_labels: bool
    fingerprint: bytes
    count: int
    shape: tuple[int, int, int]  # (C, H, W)
    group: int  # version 2: images per stream; version 1: the encoder's batch size
    checksum: bytes
    payload_bytes: int
    payload_crc: int
    grid_bits: int = GRID_BITS
    has_names: bool = False  # a names index follows the payload

    @property
    def size(self) -> int:
        """The header's bytes: where the payload starts."""
        return HEADER_V1.size if self.version == 1 else HEADER.size

    def pack(self) -> bytes:
        flags = (FLAG_LABELS if self.has_labels else 0) | (FLAG_NAMES if self.has_names else 0)
        fields = (MAGIC, self.version, flags, self.fingerprint, self.count,
                  *self.shape, self.group, self.grid_bits, self.checksum, self.payload_bytes, self.payload_crc)
        head = HEADER.pack(*fields, 0)[:-4]
        return head + struct.pack("<I", zlib.crc32(head))


# ---- public API --------------------------------------------------------------------------------

@uses_threads
def compress(model: FractalModel, images: torch.Tensor, labels: Sequence[int] | torch.Tensor | np.ndarray | None = None,
             batch_size: int = DEFAULT_BATCH, images_per_stream: int = IMAGES_PER_STREAM, *,
             names: Sequence[str] | None = None) -> bytes:
    """Losslessly compress uint8 images (N, C, H, W) at the model's size into bytes.

    labels (N,) make the class-conditional model code the images, and are stored; None codes
    them unconditionally. About `batch_size` images are coded side by side (whole streams); it
    changes the speed, never the file. Each stream holds `images_per_stream` images: fewer cost
    a little more space (each stream's end), and a decoder then needs fewer images side by side.
    names (N,), relative paths such as "cats/tabby.png" (see `name_problem`), are stored after
    the images; `read_names` gives them back. Without names the file ends with the images.
    """
    return encode(model, images, labels, batch_size, images_per_stream, names=names)[0]


def encode(model: FractalModel, images, labels=None, batch_size: int = DEFAULT_BATCH,
           images_per_stream: int = IMAGES_PER_STREAM, *, names: Sequence[str] | None = None
           ) -> tuple[bytes, torch.Tensor]:
    """`compress`, also returning the model's bits for every value (N, C, H, W) (what pixel_bits gives)."""
    images, labels = check_inputs(model, images, labels)
    names = check_names(names, images.shape[0])
    batch_size = check_batch_size(batch_size)
    if isinstance(images_per_stream, bool) or not isinstance(images_per_stream, int) or not (
            1 <= images_per_stream <= MAX_IMAGES_PER_STREAM):
        raise CodecError(f"images per stream must be an integer in 1..{MAX_IMAGES_PER_STREAM}, "
                         f"got {images_per_stream!r}")
    N, group = images.shape[0], images_per_stream
    classes = model.config.num_classes if labels is not None else 0
    streams = [Stream(i, constriction.stream.queue.RangeEncoder()) for i in range(-(-N // group))]
    hints: list[tuple[int, int, int, int]] = []
    coder_model = float64_copy(model)
    bits = []
    for chunk in chunks(streams, N, group, batch_size):
        slices = split_rows(chunk, N, group)
        rows = slice(slices[0].start, slices[-1].stop)
        if classes > 1:  # a one-class model's labels are all 0: nothing to store
            for stream, stream_rows in zip(chunk, slices, strict=True):
                stream.coder.encode(labels[stream_rows].numpy().astype(np.int32),
                                    constriction.stream.model.Uniform(classes))
        chunk_labels = None if labels is None else labels[rows]
        coder = StreamCoding(chunk, [r.stop - r.start for r in slices], hints)
        bits.append(coding_pass(coder_model, images[rows], chunk_labels, coder)[1] / -math.log(2.0))
    words = [stream.coder.get_compressed().astype("<u4") for stream in streams]
    assert all(len(w) for w in words), "a stream of at least one value has at least one word"
    payload = b"".join([varint(len(hints)), *(varint(v) for hint in hints for v in hint),
                        *(varint(len(w)) for w in words), *(w.tobytes() for w in words)])
    header = Header(VERSION, labels is not None, fingerprint(model), N, tuple(images.shape[1:]), group,
                    pixel_checksum(images, labels), len(payload), zlib.crc32(payload), has_names=names is not None)
    index = b"" if names is None else names_index(names)
    return (header.pack() + payload + index,
            torch.cat(bits) if bits else torch.zeros(images.shape, dtype=torch.float64))


@uses_threads
def decompress(model: FractalModel, data: bytes, return_labels: bool = False, batch_size: int = DEFAULT_BATCH
               ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """The images (uint8 (N, C, H, W), CPU) that `compress` coded into `data`; with
    return_labels=True, (images, labels or None). About `batch_size` images are decoded side by side
    (whole streams); it changes the speed, never the result. Raises CodecError (one clear line) when
    the data is not a stream this model wrote, is damaged or truncated (its names index included), or
    decodes to anything but the original pixels. The stored names, if any: `read_names(data)`."""
    header = read_header(data)
    read_names(data)  # a damaged or forged names index fails the file before the long part
    batch_size = check_batch_size(batch_size)
    c = model.config
    if header.fingerprint != fingerprint(model):
        raise CodecError("compressed with a different model (the weights or config differ): decode with the "
                         "checkpoint that compressed it")
    if header.shape != (c.channels, c.img_size, c.img_size):
        raise CodecError(f"the file holds {header.shape} images, the model makes "
                         f"{(c.channels, c.img_size, c.img_size)}")
    check_count(header)
    payload = memoryview(data)[header.size:header.size + header.payload_bytes]
    decode_version = decode_v2 if header.version == 2 else decode_v1
    try:
        images, labels = decode_version(model, header, payload, batch_size)
    except CodecError:
        raise
    except Exception as e:  # the entropy coder refusing the bits: a damaged stream
        raise CodecError(f"the compressed stream is damaged ({type(e).__name__})") from None
    if pixel_checksum(images, labels) != header.checksum:
        raise CodecError("the decoded pixels fail the file's checksum: the file is damaged or forged (its "
                         "checksums agree), or this machine's float64 arithmetic differs from the encoder's "
                         "by more than the format's margin")
    return (images, labels) if return_labels else images


def read_header(data: bytes | memoryview) -> Header:
    """Parse and check the header of a compressed stream (and the lengths and crcs of the payload and
    of the names index)."""
    data = memoryview(data)
    if len(data) < len(MAGIC) or bytes(data[:len(MAGIC)]) != MAGIC:
        raise CodecError("not a fractalgen compressed file (wrong magic bytes)")
    version = data[len(MAGIC)] if len(data) > len(MAGIC) else None
    layout = HEADER_V1 if version == 1 else HEADER
    if len(data) < layout.size:
        raise CodecError(f"truncated: {len(data)} bytes, shorter than the {layout.size}-byte header")
    fields = layout.unpack(data[:layout.size])
    if zlib.crc32(data[:layout.size - 4]) != fields[-1]:
        raise CodecError("the header is damaged (checksum mismatch)")
    if version not in (1, 2):
        raise CodecError(f"format version {version} is not supported (this fractalgen reads 1 and {VERSION})")
    if version == 1:
        _, _, flags, fp, count, C, H, W, group, checksum, payload_bytes, payload_crc, _ = fields
        grid_bits = 0
    else:
        _, _, flags, fp, count, C, H, W, group, grid_bits, checksum, payload_bytes, payload_crc, _ = fields
    if version == 2 and flags & ~(FLAG_LABELS | FLAG_NAMES):
        raise CodecError(f"the header has flags {flags:#04x}, unknown to this fractalgen (a newer format?)")
    header = Header(version, bool(flags & FLAG_LABELS), fp, count, (C, H, W), group, checksum, payload_bytes,
                    payload_crc, grid_bits, has_names=version == 2 and bool(flags & FLAG_NAMES))
    got = len(data) - layout.size
    if got < payload_bytes:
        raise CodecError(f"truncated: the payload has {got} of {payload_bytes} bytes")
    if got > payload_bytes and not header.has_names:
        raise CodecError(f"{got - payload_bytes} unexpected bytes after the payload")
    if got < payload_bytes + 4 and header.has_names:
        raise CodecError("truncated: the names index after the payload is missing")
    if zlib.crc32(data[layout.size:layout.size + payload_bytes]) != payload_crc:
        raise CodecError("the payload is damaged (checksum mismatch)")
    if header.has_names and zlib.crc32(data[layout.size + payload_bytes:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise CodecError("the names index is damaged or truncated (checksum mismatch)")
    if group < 1 or (version == 2 and (group > MAX_IMAGES_PER_STREAM or not 1 <= grid_bits <= 16)):
        raise CodecError("the header is damaged (impossible stream layout)")
    return header


def check_count(header: Header):
    """Refuse a header claiming more images than its payload can hold (a forged count would otherwise
    decode without end): every value costs at least MIN_BITS_PER_VALUE, and a version 2 stream takes at
    least five bytes (its length and one word)."""
    streams = -(-header.count // header.group) if header.version == 2 else 1
    capacity = (8 * header.payload_bytes + STATE_BITS * streams) / MIN_BITS_PER_VALUE
    values = header.count * math.prod(header.shape)
    if (header.version == 2 and 5 * streams > header.payload_bytes) or values > capacity:
        raise CodecError(f"the header is damaged or forged: it claims {header.count} images, more than its "
                         f"{header.payload_bytes}-byte payload can hold")


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 2**20:
        raise CodecError(f"batch size must be an integer in 1..{2**20}, got {batch_size!r}")
    return batch_size


# ---- names: an optional index after the payload ----------------------------------------------------

# Characters Windows refuses in a file name (a backslash separates folders there). Control characters
# are refused too: names are printed.
FORBIDDEN_CHARACTERS = frozenset('\\:*?"<>|')
DEVICE_NAMES = frozenset(["CON", "PRN", "AUX", "NUL", *(f"{port}{k}" for port in ("COM", "LPT") for k in range(10))])


def shown(name: str) -> str:
    """A name as an error message quotes it: its start, when it is long."""
    return repr(name if len(name) <= 60 else name[:50] + "...")


def name_problem(name) -> str | None:
    """What keeps `name` from being a stored name, or None. A stored name is a relative path inside one
    folder that every common system can write: '/'-separated parts, none empty, '.' or '..', none
    ending in a dot or a space, none a Windows device name (CON, NUL, COM1 ...); no control characters
    and none of \\ : * ? " < > |; at most MAX_PART_BYTES bytes a part and MAX_NAME_BYTES in all (UTF-8)."""
    if not isinstance(name, str):
        return f"a name is a {type(name).__name__}, not a string"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: a file name that was not UTF-8 on disk
        return f"{shown(name)} is not valid Unicode text"
    if not name:
        return "a name is empty"
    if size > MAX_NAME_BYTES:
        return f"{shown(name)} is longer than {MAX_NAME_BYTES} bytes"
    bad = next((ch for ch in name if ch in FORBIDDEN_CHARACTERS or unicodedata.category(ch) == "Cc"), None)
    if bad is not None:
        return f"{shown(name)} holds {bad!r}: a stored name holds no control characters and none of \\ : * ? \" < > |"
    if name.startswith("/"):
        return f"{shown(name)} is an absolute path (names are relative paths inside the output folder)"
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return f"{shown(name)} has an empty, '.' or '..' part (names are relative paths inside the output folder)"
        if len(part.encode("utf-8")) > MAX_PART_BYTES:
            return f"{shown(name)} has a part longer than {MAX_PART_BYTES} bytes"
        if part[-1] in ". ":
            return f"{shown(name)} has a part ending in {part[-1]!r}, which Windows drops"
        if part.split(".")[0].rstrip(" ").upper() in DEVICE_NAMES:
            return f"{shown(name)} has a part that Windows reserves for a device ({part.split('.')[0]})"
    return None


def same_file_key(name: str) -> str:
    """Names with one key are one file on a file system that ignores case and Unicode normalisation
    (Windows, macOS): "A.png", "a.png" and "\u00e4.png" in either composition."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())


def names_problem(names: list[str]) -> str | None:
    """What keeps `names` from being stored together, or None: a bad name (`name_problem`), two names
    of one file (on some system: `same_file_key`), or a name that is also another's folder. One sort
    of the keys, with "/" as the lowest character: a file's key is then followed by its own folder's."""
    for name in names:
        if (problem := name_problem(name)) is not None:
            return problem
    keys = [same_file_key(name).replace("/", "\0") for name in names]  # no name holds a control character
    order = sorted(range(len(names)), key=keys.__getitem__)
    for first, then in zip(order, order[1:], strict=False):
        if keys[first] == keys[then]:
            return (f"{shown(names[first])} and {shown(names[then])} name one file (names must differ beyond case and "
                    "Unicode form)")
        if keys[then].startswith(keys[first]) and keys[then][len(keys[first])] == "\0":
            return f"{shown(names[first])} is a file, and a folder in {shown(names[then])}"
    return None


def check_names(names, count: int) -> list[str] | None:
    """The library's `names` argument: None, or one stored name per image."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise CodecError(f"names must be a list of strings, one per image, got {type(names).__name__}")
    names = list(names)
    if len(names) != count:
        raise CodecError(f"{len(names)} names for {count} images")
    if (problem := names_problem(names)) is not None:
        raise CodecError(f"names: {problem}")
    return names


def names_index(names: list[str]) -> bytes:
    """The names index: each name's length in bytes (varint) and its UTF-8 bytes, then their crc32."""
    index = b"".join(varint(len(encoded)) + encoded for encoded in (name.encode("utf-8") for name in names))
    return index + struct.pack("<I", zlib.crc32(index))


def read_names(data: bytes | memoryview) -> list[str] | None:
    """The names stored in a compressed file, one per image in order; None when it stores none (written
    without names, or by a fractalgen before them). The model is not needed. Raises CodecError (one clear
    line) for a damaged or forged file, names included: its work and memory are bounded by its size."""
    header = read_header(data)
    if not header.has_names:
        return None
    start = header.size + header.payload_bytes
    index = memoryview(data)[start:len(data) - 4]
    if 2 * header.count > len(index):  # a name takes at least two bytes: its length and one character
        raise CodecError(f"the names index is damaged or forged: {len(index)} bytes cannot name "
                         f"{header.count} images")
    reader = PayloadReader(index, "names index")
    names = []
    for _ in range(header.count):
        raw = reader.take(reader.count(limit=MAX_NAME_BYTES))
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise CodecError("the names index is damaged or forged (a name is not UTF-8)") from None
    if reader.remaining():
        raise CodecError(f"the names index is damaged ({reader.remaining()} bytes after its last name)")
    if (problem := names_problem(names)) is not None:
        raise CodecError(f"the names index is damaged or forged: {problem}")
    return names


# ---- streams -------------------------------------------------------------------------------------

@dataclass
class Stream:
    """One range-coded stream: its images side by side, one `code` call (step) at a time."""

    index: int
    coder: Any  # constriction's RangeEncoder or RangeDecoder
    step: int = 0


def split_rows(chunk: list[Stream], count: int, group: int) -> list[slice]:
    """The image rows of each stream in `chunk`: stream i holds images i*group ... (i+1)*group - 1."""
    return [slice(s.index * group, min(count, (s.index + 1) * group)) for s in chunk]


def chunks(streams: list[Stream], count: int, group: int, batch_size: int):
    """Whole streams, about batch_size images at a time (at least one stream)."""
    per_chunk = max(1, batch_size // group)
    for start in range(0, len(streams), per_chunk):
        yield streams[start:start + per_chunk]


@functools.cache
def exp_table(grid_bits: int) -> torch.Tensor:
    """Integer weights (D + 1,) int64: round(2^WEIGHT_BITS * exp(-d * 2^-grid_bits)) for d = 0 .. D, the
    last d with a non-zero weight, then a 0 (for every d beyond). Built in decimal arithmetic, which
    gives the same table on every machine (a platform's exp may differ in its last bit)."""
    weights = []
    with localcontext() as context:
        context.prec = 50
        ratio = (Decimal(-1) / Decimal(2**grid_bits)).exp()
        weight = Decimal(2**WEIGHT_BITS)
        while (rounded := int(weight.to_integral_value())) > 0:
            weights.append(rounded)
            weight *= ratio
    return torch.tensor(weights + [0], dtype=torch.int64)


def rounded_logits(logits: torch.Tensor, grid_bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 logits (R, V) -> (grid points (R, V) int64, floor (R, V) int64, near a boundary (R, V) bool).

    A logit x sits at s = x * 2^grid_bits grid steps; it rounds to floor(s) + 1 when its fraction is
    at least 0.5. Near: within MARGIN of that boundary, where another machine might round the other way.
    """
    if logits.dtype != torch.float64:
        raise TypeError(f"the coding pass runs in float64, got {logits.dtype} logits")
    if not bool(torch.isfinite(logits).all()):
        raise CodecError("the model gives non-finite probabilities (NaN or infinite logits): its weights are damaged")
    scaled = logits.cpu() * 2.0**grid_bits  # exact: a power of two
    floor = torch.floor(scaled)
    fraction = scaled - floor  # exact
    near = (fraction - 0.5).abs() < MARGIN * 2.0**grid_bits
    return floor.long() + (fraction >= 0.5).long(), floor.long(), near


def probabilities(grid_points: torch.Tensor, grid_bits: int) -> np.ndarray:
    """Rounded logits (R, V) int64 -> probabilities (R, V) float64 for the range coder: integer weights
    from exp_table, each divided by its row's total (an exact sum; one correctly rounded division)."""
    table = exp_table(grid_bits)
    distance = (grid_points.amax(1, keepdim=True) - grid_points).clamp(max=len(table) - 1)
    weights = table[distance].numpy()
    return weights / weights.sum(1, keepdims=True)


def _log_prob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Natural log-probability of ids (B,) under (B, V) logits, in the logits' precision (at least fp32)."""
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return torch.log_softmax(logits, dim=-1).gather(1, ids[:, None].to(logits.device)).squeeze(1)


class ImageValues(ValueCoder):
    """The image's own values and their log-probabilities, no stream (pixel_bits)."""

    def code(self, logits, given):
        return given, _log_prob(logits, given)


class StreamCoding(ValueCoder):
    """Codes each value of a chunk of streams: the rows of `streams` side by side, `sizes` rows each.

    Encoding (`hints` a list): writes the given values and appends a hint (stream, step, row,
    2 * logit + rounded up) for each logit near a boundary. Decoding (`hints` a dict from
    (stream, step) to (row, logit, rounded up) triples): reads the values, following the hints.
    """

    family = constriction.stream.model.Categorical(perfect=False)

    def __init__(self, streams: list[Stream], sizes: list[int], hints, grid_bits: int = GRID_BITS):
        self.streams, self.sizes, self.hints, self.grid_bits = streams, sizes, hints, grid_bits

    def code(self, logits, given):
        points, floor, near = rounded_logits(logits, self.grid_bits)
        decoding = isinstance(self.hints, dict)
        starts = np.cumsum([0] + self.sizes[:-1]).tolist()
        if decoding:
            for stream, start in zip(self.streams, starts, strict=True):
                for row, logit, up in self.hints.get((stream.index, stream.step), ()):
                    points[start + row, logit] = floor[start + row, logit] + up
        elif bool(near.any()):
            for row, logit in near.nonzero().tolist():
                stream_number = int(np.searchsorted(starts, row, side="right")) - 1
                stream = self.streams[stream_number]
                up = int(points[row, logit] - floor[row, logit])
                self.hints.append((stream.index, stream.step, row - starts[stream_number], 2 * logit + up))
        probs = probabilities(points, self.grid_bits)
        ids = given.cpu().numpy().astype(np.int32) if not decoding else np.empty(len(probs), dtype=np.int32)
        for stream, start, size in zip(self.streams, starts, self.sizes, strict=True):
            rows = slice(start, start + size)
            if decoding:
                ids[rows] = stream.coder.decode(self.family, probs[rows])
            else:
                stream.coder.encode(ids[rows], self.family, probs[rows])
            stream.step += 1
        ids = torch.from_numpy(ids.astype(np.int64)).to(logits.device)
        return ids, _log_prob(logits, ids)


# ---- the coding pass: the sampler with values chosen by a coder ----------------------------------

def float64_copy(model: FractalModel) -> FractalModel:
    """The model in float64, for the coding pass (the caller's model is left as it is)."""
    return copy.deepcopy(model).double().eval()


@torch.no_grad()
@eval_mode
def coding_pass(model: FractalModel, images: torch.Tensor | None, labels: torch.Tensor | None,
                coder: ValueCoder, n: int | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sampler over a batch with `coder` choosing every value; returns uint8 images (B, C, H, W)
    on the CPU and the natural log-probability of every value (B, C, H, W).

    The encoder and `pixel_bits` give the images (the coder takes each value's target from them,
    and nothing else: the pass computes what the decoder computes); the decoder gives only the
    count `n`. Unguided (cfg 1), temperature 1, one token per MAR step.
    """
    device = model.device
    known = None
    if images is not None:
        values = images.to(device, model.null_class.dtype)
        known = Known(values, torch.ones_like(values, dtype=torch.bool))
        n = images.shape[0]
    values, logp = model.generate(
        labels=None if labels is None else labels.to(device), n=n, settings=coding_settings(model),
        generator=generator, known=known, coder=coder)
    return values.round().to(torch.uint8).cpu(), logp.cpu()


def coding_settings(model: FractalModel) -> SamplingSettings:
    """What the coder samples with: unguided, temperature 1, one token per MAR step."""
    return SamplingSettings(cfg=1.0, cfg_schedule="constant", temperature=1.0, filter_threshold=0.0,
                            num_iter=tuple(lv.seq_len for lv in model.config.levels))


def decode_v2(model: FractalModel, header: Header, payload: memoryview, batch_size: int):
    """Every stream of a version 2 payload, about batch_size images side by side."""
    count, group = header.count, header.group
    classes = model.config.num_classes if header.has_labels else 0
    if header.has_labels and classes == 0:
        raise CodecError("the file stores class labels, but the model is unconditional")
    reader = PayloadReader(payload)
    hints: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for _ in range(reader.count(limit=len(payload) // 4)):
        stream, step, row, value = (reader.varint() for _ in range(4))
        if row >= group or value >= 2 * 2**16:
            raise CodecError("the payload is damaged (impossible hint)")
        hints.setdefault((stream, step), []).append((row, value // 2, value % 2))
    num_streams = -(-count // group)
    lengths = [reader.count(limit=len(payload) // 4) for _ in range(min(num_streams, len(payload)))]
    if len(lengths) < num_streams or 0 in lengths or 4 * sum(lengths) != reader.remaining():
        raise CodecError("the payload is damaged (its streams do not fill it)")
    words = np.frombuffer(payload[reader.position:], dtype="<u4").astype(np.uint32)
    ends = np.cumsum(lengths).tolist()
    streams = [Stream(i, constriction.stream.queue.RangeDecoder(words[end - length:end]))
               for i, (length, end) in enumerate(zip(lengths, ends, strict=True))]
    coder_model = float64_copy(model)
    C, H, W = header.shape
    images, labels = [], []
    for chunk in chunks(streams, count, group, batch_size):
        slices = split_rows(chunk, count, group)
        chunk_labels = None
        if header.has_labels:
            chunk_labels = torch.cat([read_labels(stream.coder, rows.stop - rows.start, classes)
                                      for stream, rows in zip(chunk, slices, strict=True)])
            labels.append(chunk_labels)
        coder = StreamCoding(chunk, [r.stop - r.start for r in slices], hints, header.grid_bits)
        n = slices[-1].stop - slices[0].start
        images.append(coding_pass(coder_model, None, chunk_labels, coder, n=n)[0])
        for stream in chunk:
            if not stream.coder.maybe_exhausted():
                raise CodecError("the payload is damaged (a stream holds more than its images)")
    decoded = torch.cat(images) if images else torch.zeros(0, C, H, W, dtype=torch.uint8)
    if not header.has_labels:
        return decoded, None
    return decoded, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def read_labels(decoder, count: int, num_classes: int) -> torch.Tensor:
    if num_classes <= 1:
        return torch.zeros(count, dtype=torch.long)
    return torch.from_numpy(decoder.decode(constriction.stream.model.Uniform(num_classes), count).astype(np.int64))


def varint(value: int) -> bytes:
    """LEB128: 7 bits a byte, low bits first."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class PayloadReader:
    """Reads varints from a payload (or the names index: `part`), refusing to run past its end."""

    def __init__(self, payload: memoryview, part: str = "payload"):
        self.payload, self.position, self.part = payload, 0, part

    def varint(self) -> int:
        value = shift = 0
        while True:
            if self.position >= len(self.payload) or shift > 63:
                raise CodecError(f"the {self.part} is damaged (a number runs past its end)")
            byte = self.payload[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def count(self, limit: int) -> int:
        value = self.varint()
        if value > limit:
            raise CodecError(f"the {self.part} is damaged (a count larger than it can hold)")
        return value

    def take(self, length: int) -> bytes:
        if length > self.remaining():
            raise CodecError(f"the {self.part} is damaged (a field runs past its end)")
        self.position += length
        return bytes(self.payload[self.position - length:self.position])

    def remaining(self) -> int:
        return len(self.payload) - self.position


# ---- format version 1 (read only) ----------------------------------------------------------------

def decode_v1(model: FractalModel, header: Header, payload: memoryview, batch_size: int):
    """A version 1 payload: one stream in the encoder's batch layout, coded in float32 on one CPU
    thread with MAR orders drawn from ORDER_SEED (batch_size does not apply)."""
    decoder = V1Decoding(bytes(payload))
    c = model.config
    labels = decoder.read_labels(header.count, c.num_classes) if header.has_labels else None
    chunks_ = []
    for start in range(0, header.count, header.group):
        rows = slice(start, start + header.group)
        n = min(header.group, header.count - start)
        generator = torch.Generator(device=model.device).manual_seed(ORDER_SEED)
        with one_cpu_thread():
            chunks_.append(coding_pass(model, None, None if labels is None else labels[rows], decoder, n=n,
                                       generator=generator)[0])
    C, H, W = header.shape
    images = torch.cat(chunks_) if chunks_ else torch.zeros(0, C, H, W, dtype=torch.uint8)
    return images, labels


@contextmanager
def one_cpu_thread():
    """Version 1 files were coded on one intra-op thread (its float32 rounding depends on the split)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class V1Decoding(ValueCoder):
    """Reads each value of a version 1 stream with the model's float32 distribution."""

    fixed_order = False

    def __init__(self, payload: bytes):
        if len(payload) % 4:
            raise CodecError("the payload is damaged (not whole 32-bit words)")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self.family = constriction.stream.model.Categorical(perfect=False)
        self.stream = constriction.stream.queue.RangeDecoder(words)

    def code(self, logits, given):
        probs = torch.softmax(logits.float(), dim=-1).double().cpu().numpy()
        ids = torch.from_numpy(self.stream.decode(self.family, probs).astype(np.int64)).to(logits.device)
        return ids, _log_prob(logits, ids)

    def read_labels(self, count: int, num_classes: int) -> torch.Tensor:
        return read_labels(self.stream, count, num_classes)


# ---- fingerprints and checks -----------------------------------------------------------------

# The config fields a file's model fingerprint covers, fixed with the format: fields added to ModelConfig
# later (class names, say) must not change which files a model decodes.
FINGERPRINT_FIELDS = ("img_sizes", "widths", "blocks", "heads", "kinds", "channels", "num_classes", "num_conds",
                      "guiding_pixel", "attn_dropout", "proj_dropout", "label_drop_prob", "r_weight", "pixel_mean",
                      "pixel_std", "num_iter", "cfg", "temperature", "cfg_schedule", "name")


def fingerprint(model: FractalModel) -> bytes:
    """8 bytes of SHA-256 over the config's FINGERPRINT_FIELDS and every weight (names, shapes, fp32 values).

    Four of the fields (num_iter, cfg, temperature, cfg_schedule) were sampling settings of the config when
    the format was fixed; they now come from the model (`FractalModel.presets_for_fingerprint`)."""
    presets = model.presets_for_fingerprint()
    fields = {name: presets[name] if name in presets else getattr(model.config, name) for name in FINGERPRINT_FIELDS}
    h = hashlib.sha256(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
                                  indent=1).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.digest()[:8]


def pixel_checksum(images: torch.Tensor, labels: torch.Tensor | None) -> bytes:
    h = hashlib.sha256(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.to(torch.int64).numpy().astype("<i8").tobytes())
    return h.digest()[:8]


def check_inputs(model: FractalModel, images: torch.Tensor | np.ndarray,
                 labels: Sequence[int] | torch.Tensor | np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    c = model.config
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise CodecError(f"images must be uint8, got {images.dtype}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (c.channels, c.img_size, c.img_size):
        raise CodecError(f"images must be (N, {c.channels}, {c.img_size}, {c.img_size}), "
                         f"got {tuple(images.shape)}")
    if images.shape[0] >= 2**32:
        raise CodecError("at most 2**32 - 1 images per file")
    images = images.cpu().contiguous()
    if labels is None:
        return images, None
    if c.num_classes == 0:
        raise CodecError("this model is unconditional: compress without labels")
    try:
        labels = as_labels(labels.tolist() if isinstance(labels, np.ndarray) else labels, "cpu")
    except ValueError as e:
        raise CodecError(str(e)) from None
    if labels.numel() != images.shape[0]:
        raise CodecError(f"{labels.numel()} labels for {images.shape[0]} images")
    check_labels(labels, c.num_classes, CodecError)
    return images, labels
