"""`fractalgen export`: any checkpoint as a Hugging Face-style model folder (formats/folder.py).

    fractalgen export --checkpoint runs/mnist --out mnist-fractalar --dtype bfloat16 --card card.json
"""
from __future__ import annotations

from ..errors import UserError
from ..jsonfile import read_object
from .options import add_checkpoint, add_json, add_old_name, add_runtime, apply_runtime, emit_json

DTYPES = {"float32": None, "bfloat16": "bfloat16", "float16": "float16"}


def register(subparsers):
    add_export(subparsers)


def add_export(sub):
    p = sub.add_parser("export", help="write a checkpoint as a model folder (config.json, model.safetensors, "
                       "README.md model card) that fractalgen.load and the Hugging Face hub read",
                       description="Any checkpoint (an official .pth with --preset, ours, a training run folder, "
                       "a bundled name) as a model folder. The card's numbers come from --card: a JSON object of "
                       "fractalgen.CardFacts fields, each number with the command that measured it.")
    add_checkpoint(p, default=None)
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="storage type of the floating-point weights (loading gives float32 again)")
    p.add_argument("--card", help="JSON file with the model card's facts, e.g. {\"dataset\": \"mnist\", "
                   "\"bits_per_dim\": 1.19, \"bits_per_dim_command\": \"fractalgen nll ...\"}")
    p.add_argument("--repo-id", help="the hub id the card's usage lines name (owner/name)")
    p.add_argument("--overwrite", action="store_true", help="replace config.json, model.safetensors and "
                   "README.md if the folder already holds them")
    add_old_name(p, "--force", "--overwrite", dest="overwrite", nargs=0, const=True)
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_export)


def read_card(path: str | None) -> dict:
    if path is None:
        return {}
    return read_object(path, f"--card {path}")


def run_export(args) -> int:
    import torch

    from ..formats import export
    from ..formats.folder import FOLDER_FILES

    if args.checkpoint is None:
        raise UserError("give --checkpoint (a checkpoint file, a training run folder or a bundled model name)")
    apply_runtime(args)
    card = read_card(args.card)
    if args.repo_id:
        card["repo_id"] = args.repo_id
    dtype_name = DTYPES[args.dtype]
    dtype = getattr(torch, dtype_name) if dtype_name else None
    folder = export(args.checkpoint, args.out, config=args.preset, card=card, dtype=dtype,
                    overwrite=args.overwrite)
    files = {name: str(folder / name) for name in FOLDER_FILES}
    print(f"model folder: {folder} ({', '.join(files)}); load it with fractalgen.load({str(folder)!r})")
    emit_json(args, {"out": str(folder), **files})
    return 0
