"""JSON read back from disk: one reader with bounds, for every file and stored field fractalgen parses.

Model folders' config.json (local or in the hub cache), `export --card` files, a training
checkpoint's config and options, metrics.jsonl lines and safetensors metadata all come through
here. What it bounds, so that a damaged or hostile file is one clear line and never a hang, a
traceback or a runaway allocation:

- only regular files are read (a FIFO or a device is refused without blocking: the file is opened
  with O_NONBLOCK and checked with fstat before a byte is read), and at most `max_bytes` of them;
- nesting is at most MAX_DEPTH deep (json's recursive parser would otherwise raise RecursionError);
- integers fit 64 bits (a 5000-digit number is damage, and Python refuses to print it);
- numbers are finite: NaN and the infinities, which Python's json accepts (`NaN`, `1e999`), are refused;
- text is UTF-8.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .errors import UserError

MAX_BYTES = 16 * 2**20  # a config, a card or stored options is a few KiB
MAX_DEPTH = 32  # the deepest JSON fractalgen writes is 3 levels
INTEGER_LIMIT = 2**63  # |integer| below it: what a 64-bit field holds


class JSONError(UserError, ValueError):
    """JSON that fails the bounds, or does not parse (a ValueError for library callers)."""


def _refuse(why: str):
    raise JSONError(why)


def _integer(text: str) -> int:
    if len(text) > 20 or abs(int(text)) >= INTEGER_LIMIT:
        _refuse(f"an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def _number(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        _refuse(f"the number {text[:30]} is out of range")
    return value


def _constant(text: str):
    _refuse(f"{text} is not a finite number")


def depth(value) -> int:
    """How deeply lists and objects nest in `value` (a scalar: 0), walked without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            todo.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def parse(text: str | bytes, name: str, error: type[Exception] = UserError, max_depth: int = MAX_DEPTH):
    """The JSON value of `text`; anything outside the bounds above is `error`, one line naming `name`."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        value = json.loads(text, parse_int=_integer, parse_float=_number, parse_constant=_constant)
    except UnicodeDecodeError:
        raise error(f"{name} is not UTF-8 text") from None
    except RecursionError:
        raise error(f"{name} is nested too deeply (more than {max_depth} levels)") from None
    except json.JSONDecodeError as e:
        raise error(f"{name} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except JSONError as e:
        raise error(f"{name}: {e}") from None
    except ValueError as e:  # int() of a number past Python's digit limit
        raise error(f"{name}: {str(e)[:100]}") from None
    if depth(value) > max_depth:
        raise error(f"{name} is nested too deeply (more than {max_depth} levels)")
    return value


def parse_object(text: str | bytes, name: str, error: type[Exception] = UserError) -> dict:
    """`parse`, and the value must be a JSON object."""
    value = parse(text, name, error)
    if not isinstance(value, dict):
        raise error(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def read_bytes(path: str | Path, name: str, error: type[Exception] = UserError, max_bytes: int = MAX_BYTES,
               follow_links: bool = True) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them, read without ever blocking
    on a FIFO or a device."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        reason = "it is a symbolic link" if not follow_links and os.path.islink(path) else e.strerror
        raise error(f"cannot read {name}: {reason}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"cannot read {name}: not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{name} is too large ({info.st_size / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB)")
        try:
            data = f.read(info.st_size + 1 if info.st_size < max_bytes else max_bytes + 1)
        except OSError as e:
            raise error(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > max_bytes:  # it grew while being read
        raise error(f"{name} is too large (more than {max_bytes / 2**20:.0f} MiB)")
    return data


def read_object(path: str | Path, name: str, error: type[Exception] = UserError) -> dict:
    """The JSON object in the file at `path`; else `error`, one line naming the file as `name`."""
    return parse_object(read_bytes(path, name, error), name, error)
