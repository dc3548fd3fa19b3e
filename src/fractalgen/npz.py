"""Reading .npz archives from elsewhere: only the arrays asked for, each checked before it is read.

An .npz is a zip of .npy files, and `np.load` decompresses a member whenever it is touched: a
3 MB file can carry an unused member that declares (and inflates to) 3 GiB. So the archive is
opened here with zipfile, each wanted member's .npy header (shape, dtype) is read first for the
caller to check, arrays of Python objects (pickles) are refused, and an array is read only when
its declared size fits in the memory this machine has free.

    with NpzArchive(path) as archive:
        shape, dtype = archive.header("images")   # cheap: the first few hundred bytes
        ...check shape and dtype...
        images = archive.read("images")
"""
from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import UserError
from .memory import gib, host_room

# What a damaged or hostile archive raises while we read it; each becomes one line naming the file.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, NotImplementedError, KeyError)


class NpzArchive:
    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"file not found: {self.path}")
        try:
            self.zip = zipfile.ZipFile(self.path)
        except READ_ERRORS as e:
            raise UserError(f"cannot read {self.path}: not an .npz archive ({_first_line(e)})") from None
        self.members = [n[:-4] for n in self.zip.namelist() if n.endswith(".npy")]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) as the member declares them, without reading its data."""
        if name not in self.members:
            raise UserError(f"{self.path} has no {name!r} array (it has: {', '.join(self.members) or 'nothing'})")
        try:
            with self.zip.open(name + ".npy") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
        except READ_ERRORS as e:
            raise UserError(f"cannot read {self.path}: array {name!r} is damaged ({_first_line(e)})") from None
        if dtype.hasobject:
            raise UserError(f"refusing {self.path}: array {name!r} holds Python objects, which would be "
                            f"unpickled (only plain numeric arrays are read)")
        return tuple(shape), dtype

    def mapped(self, name: str) -> np.ndarray | None:
        """The member's data mapped from the file, not read (pages load as they are touched), or None
        where it cannot be: a compressed member (np.savez_compressed) or a Fortran-ordered array.

        Copy-on-write: writing to the array changes this process's copy, never the file."""
        shape, dtype = self.header(name)
        try:
            info = self.zip.getinfo(name + ".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            with self.zip.open(info) as f:  # the .npy header's own length
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                _, fortran_order, _ = read_header(f)
                npy_header = f.tell()
            if fortran_order:
                return None
            with open(self.path, "rb") as f:  # the zip entry's local header: 30 bytes, then name and extra field
                f.seek(info.header_offset)
                local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                raise ValueError("bad local file header")
            start = (info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                     + int.from_bytes(local[28:30], "little"))
            size = math.prod(shape) * dtype.itemsize
            if start + npy_header + size > self.path.stat().st_size:
                raise UserError(f"{self.path}: array {name!r} declares shape {shape} ({gib(size)}), more than "
                                f"the file holds")
            return np.memmap(self.path, dtype=dtype, mode="c", offset=start + npy_header, shape=shape)
        except READ_ERRORS as e:
            raise UserError(f"cannot read {self.path}: array {name!r} is damaged ({_first_line(e)})") from None

    def read(self, name: str) -> np.ndarray:
        """The member's data, once its declared size is known to fit in free memory."""
        shape, dtype = self.header(name)
        size = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd shapes
        room = host_room()
        if room is not None and size > room.bytes:
            raise UserError(f"{self.path}: array {name!r} declares shape {shape} ({gib(size)}), more than the "
                            f"{gib(room.bytes)} {room.source}")
        try:
            with self.zip.open(name + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except READ_ERRORS as e:
            raise UserError(f"cannot read {self.path}: array {name!r} is damaged ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]
