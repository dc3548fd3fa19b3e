"""Lossless image compression with the model's own conditional distributions (range coding).

An image costs its code length, -log2 p(x) under the model, plus a few bytes. The sampler is
the model: it visits every value in generation order and computes its distribution from what
came before. Coding reuses it unchanged: a `ValueCoder` (sampling.py) takes the place of the
random draw, so the encoder (which takes the image's value and writes it to the stream) and
the decoder (which reads the value from the stream) run the very same computation, in the same
batch layout, and see bit-identical logits. Probabilities are quantised by the entropy coder
(`constriction`, a maintained Rust library) to 24-bit integer frequencies with a floor of one,
so every value stays codable and both sides agree exactly.

MAR levels generate one token per step while coding (num_iter = tokens), in a random order drawn
from a fixed seed, so no value is coded without its predecessors; a guiding pixel is coded too
(its bits are part of the file, see `pixel_bits`).

File layout (little-endian), HEADER.size = 47 bytes, then the range coder's 32-bit words:
  magic "FGLC" | version u8 | flags u8 (bit 0: labels stored) | model fingerprint 8 bytes
  | count u32 | channels u8 | height u16 | width u16 | batch u32 (the encoder's batch size)
  | pixel checksum 8 bytes | payload bytes u32 | payload crc32 u32 | header crc32 u32
The payload holds the labels (uniform over the classes, if stored) and then, batch by batch,
every value in generation order. Decoding runs in the recorded batch layout and on one CPU thread
whatever the caller asks, and returns images only after their checksum matches.
"""
from __future__ import annotations

import hashlib
import math
import struct
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from .errors import UserError
from .model import FractalModel, eval_mode
from .sampling import Known, ValueCoder

MAGIC = b"FGLC"
VERSION = 1
FLAG_LABELS = 1
HEADER = struct.Struct("<4sBB8sIBHHI8sIII")
DEFAULT_BATCH = 512  # images decoded side by side: one sampler pass serves them all
ORDER_SEED = 0  # MAR levels: the random generation order, the same for encoder and decoder


class CodecError(UserError, ValueError):
    """A compressed stream that cannot be decoded here: damaged, truncated, foreign or from another model."""


@dataclass(frozen=True)
class Header:
    version: int
    has_labels: bool
    fingerprint: bytes
    count: int
    shape: tuple[int, int, int]  # (C, H, W)
    batch: int
    checksum: bytes
    payload_bytes: int
    payload_crc: int

    def pack(self) -> bytes:
        fields = (MAGIC, self.version, FLAG_LABELS if self.has_labels else 0, self.fingerprint, self.count,
                  *self.shape, self.batch, self.checksum, self.payload_bytes, self.payload_crc)
        head = HEADER.pack(*fields, 0)[:-4]
        return head + struct.pack("<I", zlib.crc32(head))


# ---- public API --------------------------------------------------------------------------------

def compress(model: FractalModel, images, labels=None, batch_size: int = DEFAULT_BATCH) -> bytes:
    """Losslessly compress uint8 images (N, C, H, W) at the model's size into bytes.

    labels (N,) make the class-conditional model code the images, and are stored; None codes
    them unconditionally. `batch_size` images are coded side by side (recorded in the file).
    """
    return encode(model, images, labels, batch_size)[0]


def encode(model: FractalModel, images, labels=None, batch_size: int = DEFAULT_BATCH) -> tuple[bytes, torch.Tensor]:
    """`compress`, also returning the model's bits for every value (N, C, H, W) (what pixel_bits gives)."""
    images, labels = check_inputs(model, images, labels)
    if batch_size < 1:
        raise CodecError(f"batch size must be >= 1, got {batch_size}")
    encoder = RangeEncoding()
    if labels is not None:
        encoder.write_labels(labels, model.config.num_classes)
    logp = []
    for start in range(0, images.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        logp.append(coding_pass(model, images[rows], None if labels is None else labels[rows], encoder)[1])
    payload = encoder.payload()
    header = Header(VERSION, labels is not None, fingerprint(model), images.shape[0], tuple(images.shape[1:]),
                    batch_size, pixel_checksum(images, labels), len(payload), zlib.crc32(payload))
    bits = torch.cat(logp) / -math.log(2.0) if logp else torch.zeros(images.shape)
    return header.pack() + payload, bits


def decompress(model: FractalModel, data: bytes, return_labels: bool = False):
    """The images (uint8 (N, C, H, W), CPU) that `compress` coded into `data`; with
    return_labels=True, (images, labels or None). Raises CodecError (one clear line) when the
    data is not a stream this model wrote, is damaged or truncated, or decodes to anything but
    the original pixels."""
    header = read_header(data)
    c = model.config
    if header.fingerprint != fingerprint(model):
        raise CodecError("compressed with a different model (the weights or config differ): decode with the "
                         "checkpoint that compressed it")
    if header.shape != (c.channels, c.img_size, c.img_size):
        raise CodecError(f"the file holds {header.shape} images, the model makes "
                         f"{(c.channels, c.img_size, c.img_size)}")
    payload = bytes(data[HEADER.size:])
    decoder = RangeDecoding(payload)
    try:
        labels = decoder.read_labels(header.count, c.num_classes) if header.has_labels else None
        chunks = []
        for start in range(0, header.count, header.batch):
            rows = slice(start, start + header.batch)
            n = min(header.batch, header.count - start)
            chunks.append(coding_pass(model, None, None if labels is None else labels[rows], decoder, n=n)[0])
    except CodecError:
        raise
    except Exception as e:  # the entropy coder refusing the bits: a damaged stream
        raise CodecError(f"the compressed stream is damaged ({type(e).__name__})") from None
    C, H, W = header.shape
    images = torch.cat(chunks) if chunks else torch.zeros(0, C, H, W, dtype=torch.uint8)
    if pixel_checksum(images, labels) != header.checksum:
        raise CodecError("the decoded pixels fail the file's checksum: this machine computes different "
                         "probabilities than the encoder's (decode where you encoded, with the same torch "
                         "version)")
    return (images, labels) if return_labels else images


def read_header(data: bytes) -> Header:
    """Parse and check the header of a compressed stream (and the payload's length and crc)."""
    data = bytes(data)
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise CodecError("not a fractalgen compressed file (wrong magic bytes)")
    if len(data) < HEADER.size:
        raise CodecError(f"truncated: {len(data)} bytes, shorter than the {HEADER.size}-byte header")
    fields = HEADER.unpack(data[:HEADER.size])
    if zlib.crc32(data[:HEADER.size - 4]) != fields[-1]:
        raise CodecError("the header is damaged (checksum mismatch)")
    _, version, flags, fp, count, C, H, W, batch, checksum, payload_bytes, payload_crc, _ = fields
    if version != VERSION:
        raise CodecError(f"format version {version} is not supported (this fractalgen reads {VERSION})")
    header = Header(version, bool(flags & FLAG_LABELS), fp, count, (C, H, W), batch, checksum, payload_bytes,
                    payload_crc)
    got = len(data) - HEADER.size
    if got < payload_bytes:
        raise CodecError(f"truncated: the payload has {got} of {payload_bytes} bytes")
    if got > payload_bytes:
        raise CodecError(f"{got - payload_bytes} unexpected bytes after the payload")
    if zlib.crc32(data[HEADER.size:]) != payload_crc:
        raise CodecError("the payload is damaged (checksum mismatch)")
    if batch < 1:
        raise CodecError("the header is damaged (batch size 0)")
    return header


# ---- the coding pass: the sampler with values chosen by a coder ----------------------------------

@torch.no_grad()
@eval_mode
def coding_pass(model: FractalModel, images: torch.Tensor | None, labels: torch.Tensor | None,
                coder: ValueCoder, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the sampler over a batch with `coder` choosing every value; returns uint8 images (B, C, H, W)
    on the CPU and the natural log-probability of every value (B, C, H, W).

    The encoder and `pixel_bits` give the images (the coder reads each value's target from
    them); the decoder gives only the count `n`. Everything else is identical on both sides:
    unguided (cfg 1), temperature 1, one token per MAR step, a fixed order seed.
    """
    device = model.device
    known = None
    if images is not None:
        values = images.to(device, torch.float32)
        known = Known(values, torch.ones_like(values, dtype=torch.bool))
        n = images.shape[0]
    generator = torch.Generator(device=device).manual_seed(ORDER_SEED)
    with one_cpu_thread():
        values, logp = model.generate(
            labels=None if labels is None else labels.to(device), n=n, cfg=1.0, cfg_schedule="constant",
            temperature=1.0, filter_threshold=0.0, num_iter=[lv.seq_len for lv in model.config.levels],
            generator=generator, known=known, coder=coder)
    return values.round().to(torch.uint8).cpu(), logp.cpu()


@contextmanager
def one_cpu_thread():
    """Torch's CPU kernels split their work by thread count, and with it the float rounding: a stream
    coded with 1 thread failed to decode with 2 (measured). Coding always runs on one intra-op
    thread, so decoding works whatever thread setting the caller has; batching gives the speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _log_prob(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Natural log-probability of ids (B,) under (B, V) logits."""
    return torch.log_softmax(logits.float(), dim=-1).gather(1, ids[:, None]).squeeze(1)


class ImageValues(ValueCoder):
    """The image's own values and their log-probabilities, no stream (pixel_bits)."""

    def code(self, logits, given):
        return given, _log_prob(logits, given)


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    """(B, V) logits -> float64 probabilities for the coder, which quantises them deterministically."""
    return torch.softmax(logits.float(), dim=-1).double().cpu().numpy()


class RangeEncoding(ImageValues):
    """Writes each given value to a range coder with the model's distribution."""

    def __init__(self):
        self.family = constriction.stream.model.Categorical(perfect=False)
        self.stream = constriction.stream.queue.RangeEncoder()
        self.uniform = constriction.stream.model.Uniform

    def code(self, logits, given):
        self.stream.encode(given.cpu().numpy().astype(np.int32), self.family, _probabilities(logits))
        return super().code(logits, given)

    def write_labels(self, labels: torch.Tensor, num_classes: int):
        if num_classes > 1:  # a one-class model's labels are all 0: nothing to store
            self.stream.encode(labels.numpy().astype(np.int32), self.uniform(num_classes))

    def payload(self) -> bytes:
        return self.stream.get_compressed().astype("<u4").tobytes()


class RangeDecoding(ValueCoder):
    """Reads each value from the range coder with the model's distribution."""

    def __init__(self, payload: bytes):
        if len(payload) % 4:
            raise CodecError("the payload is damaged (not whole 32-bit words)")
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self.family = constriction.stream.model.Categorical(perfect=False)
        self.stream = constriction.stream.queue.RangeDecoder(words)
        self.uniform = constriction.stream.model.Uniform

    def code(self, logits, given):
        ids = torch.from_numpy(self.stream.decode(self.family, _probabilities(logits)).astype(np.int64))
        ids = ids.to(logits.device)
        return ids, _log_prob(logits, ids)

    def read_labels(self, count: int, num_classes: int) -> torch.Tensor:
        if num_classes <= 1:
            return torch.zeros(count, dtype=torch.long)
        return torch.from_numpy(self.stream.decode(self.uniform(num_classes), count).astype(np.int64))


# ---- fingerprints and checks -----------------------------------------------------------------

def fingerprint(model: FractalModel) -> bytes:
    """8 bytes of SHA-256 over the config and every weight (names, shapes, fp32 values)."""
    h = hashlib.sha256(model.config.to_json().encode())
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


def check_inputs(model: FractalModel, images, labels):
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
    labels = torch.as_tensor(labels, dtype=torch.long).view(-1).cpu()
    if labels.numel() != images.shape[0]:
        raise CodecError(f"{labels.numel()} labels for {images.shape[0]} images")
    if labels.numel() and (labels.min() < 0 or labels.max() >= c.num_classes):
        raise CodecError(f"labels must be in 0..{c.num_classes - 1}")
    return images, labels
