"""The model card: the README.md of a model folder (folder.py writes it beside the weights).

YAML front matter the Hugging Face Hub reads (license, library, tags, datasets, metrics and the
measured results as a model-index), then what a user needs: what the model is, the measured numbers
with the commands that produced them, the recommended sampling settings, intended use and limits,
and the paper to cite. The numbers come from the caller (CardFacts); the card never invents one.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import UserError

PAPER = "Li, Sun, Fan, He, *Fractal Generative Models*, 2025"
ARXIV = "https://arxiv.org/abs/2502.17437"
CITATION = """@article{li2025fractal,
  title   = {Fractal Generative Models},
  author  = {Li, Tianhong and Sun, Qinyi and Fan, Lijie and He, Kaiming},
  journal = {arXiv preprint arXiv:2502.17437},
  year    = {2025}
}"""
KIND_TAGS = {"ar": "autoregressive", "mar": "masked-autoregressive"}


@dataclass(frozen=True)
class Measurement:
    """One measured number and the command that produced it."""

    name: str  # what was measured, as a reader should see it ("held-out bits/dim")
    value: float
    command: str
    metric: str = ""  # the Hub's metric id for the front matter ("bits_per_dim", "accuracy"); "" = text only
    detail: str = ""  # e.g. "+- 0.013 (standard error), 500 held-out digits"
    percent: bool = False  # show value (a fraction) as a percentage


@dataclass(frozen=True)
class CardFacts:
    """What the card says beyond the model itself. Every number needs the command that measured it."""

    title: str = ""
    summary: str = ""
    license: str = "mit"  # the Hub's licence id for the weights
    dataset: str = ""  # the Hub's dataset id ("mnist"), for the front matter
    dataset_name: str = ""  # how the text names the data ("MNIST, the embedded 5,000-digit subset")
    split: str = ""  # where the numbers were measured ("test", "validation")
    bits_per_dim: float | None = None  # held-out negative log-likelihood
    bits_per_dim_command: str = ""
    bits_per_dim_detail: str = ""
    sample_accuracy: float | None = None  # fraction of class-conditional samples a classifier recognises
    sample_accuracy_command: str = ""
    sample_accuracy_detail: str = ""
    measurements: tuple = ()  # further Measurement objects (or dicts of their fields)
    training: str = ""  # how it was trained: commands, steps, wall time
    intended_use: str = ""  # replaces the default paragraph
    limitations: str = ""  # added to the default paragraph
    tags: tuple = ()
    repo_id: str = ""  # "owner/name" for the usage lines; default: a local folder

    def all_measurements(self) -> list[Measurement]:
        found = []
        if self.bits_per_dim is not None:
            found.append(Measurement("held-out bits/dim", self.bits_per_dim, self.bits_per_dim_command,
                                     "bits_per_dim", self.bits_per_dim_detail))
        if self.sample_accuracy is not None:
            if not 0.0 <= self.sample_accuracy <= 1.0:
                raise UserError(f"sample_accuracy is a fraction in [0, 1], got {self.sample_accuracy}")
            found.append(Measurement("class-conditional samples recognised as their class", self.sample_accuracy,
                                     self.sample_accuracy_command, "accuracy", self.sample_accuracy_detail,
                                     percent=True))
        found += [m if isinstance(m, Measurement) else Measurement(**m) for m in self.measurements]
        for m in found:
            if not isinstance(m.value, (int, float)) or not math.isfinite(m.value):
                raise UserError(f"measurement {m.name!r}: the value must be a finite number, got {m.value!r}")
            if not m.command.strip():
                raise UserError(f"measurement {m.name!r} = {m.value}: give the command that produced it")
        return found


# ---- front matter ---------------------------------------------------------------------------------

def yaml_scalar(value) -> str:
    """A YAML scalar: JSON's double-quoted strings and numbers are valid YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise UserError(f"cannot put {value} in a model card")
        return repr(value)
    return "".join(c if yaml_printable(c) else f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
                   for c in json.dumps(str(value), ensure_ascii=False))


def yaml_printable(c: str) -> bool:
    """Whether YAML allows the character as it is (its printable set); others are written as escapes."""
    o = ord(c)
    return (0x20 <= o <= 0x7E or o in (0x09, 0x0A, 0x0D, 0x85) or 0xA0 <= o <= 0xD7FF or 0xE000 <= o <= 0xFFFD
            or 0x10000 <= o <= 0x10FFFF)


def yaml_lines(value, indent: int = 0) -> list[str]:
    """Block-style YAML for nested dicts and lists of scalars or dicts (the shapes front matter uses)."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{key}:"] + yaml_lines(item, indent + 1)
            else:
                lines.append(f"{pad}{key}: {'[]' if item == [] else '{}' if item == {} else yaml_scalar(item)}")
    else:
        for item in value:
            if isinstance(item, dict):
                inner = yaml_lines(item, indent + 1)
                lines += [pad + "- " + inner[0].lstrip()] + inner[1:]
            else:
                lines.append(f"{pad}- {yaml_scalar(item)}")
    return lines


def front_matter(model, facts: CardFacts, measurements: list[Measurement]) -> dict:
    config = model.config
    tags = ["fractalgen", "fractal-generative-models", "image-generation", "pytorch"]
    tags += sorted({KIND_TAGS[kind] for kind in config.kinds})
    if config.num_classes:
        tags.append("class-conditional")
    tags += [t for t in facts.tags if t not in tags]
    meta: dict[str, Any] = {"license": facts.license, "library_name": "fractalgen",
            "pipeline_tag": "unconditional-image-generation", "tags": tags}
    if facts.dataset:
        meta["datasets"] = [facts.dataset]
    metric_ids = sorted({m.metric for m in measurements if m.metric})
    if metric_ids:
        meta["metrics"] = metric_ids
    scored = [m for m in measurements if m.metric]
    if facts.dataset and scored:
        dataset = {"type": facts.dataset, "name": facts.dataset_name or facts.dataset}
        if facts.split:
            dataset["split"] = facts.split
        meta["model-index"] = [{
            "name": facts.title or config.name,
            "results": [{
                "task": {"type": "unconditional-image-generation",
                         "name": "class-conditional image generation" if config.num_classes else "image generation"},
                "dataset": dataset,
                "metrics": [{"type": m.metric, "value": m.value, "name": m.name} for m in scored],
            }],
        }]
    return meta


# ---- body ----------------------------------------------------------------------------------------

def shown(m: Measurement) -> str:
    value = f"{100 * m.value:.1f}%" if m.percent else f"{m.value:g}"
    return f"{value} ({m.detail})" if m.detail else value


def architecture_table(config) -> list[str]:
    rows = ["| level | kind | sees | as a grid of | sequence | width | blocks | heads |",
            "|---|---|---|---|---|---|---|---|"]
    for i, level in enumerate(config.levels):
        rows.append(f"| {i} | {level.kind.upper()} | {level.size}x{level.size} | {level.grid}x{level.grid} "
                    f"patches of {level.patch_size}x{level.patch_size} | {level.seq_len} | {level.width} | "
                    f"{level.blocks} | {level.heads} |")
    head = config.pixel_head
    rows.append(f"| {config.num_levels} | pixel head | one pixel | {config.channels} channel(s) | "
                f"{config.channels} | {head.width} | {head.blocks} | {head.heads} |")
    return rows


def usage(name: str, settings: dict, config) -> list[str]:
    labels = "labels=[0, 1, 2], " if config.num_classes else "n=4, "
    if config.class_names:
        labels = f"labels={list(config.class_names[:3])!r}, "
    return [
        "```bash",
        'pip install "fractalgen-pytorch[hub]"',
        f"fractalgen sample --checkpoint {name} {'--per-class 4 ' if config.num_classes else '--n 16 '}--out samples/",
        "```",
        "",
        "```python",
        "import fractalgen",
        "",
        f'model = fractalgen.load("{name}")',
        f"images = fractalgen.sample(model, {labels}seed=0)  # uint8 (N, C, H, W), recommended settings",
        f"stronger = fractalgen.sample(model, {labels}cfg={settings['cfg'] + 1.0!r}, seed=0)  # any setting overrides",
        "```",
    ]


def model_card(model, settings: dict, facts: CardFacts, stored_dtype: str = "float32") -> str:
    """The whole README.md: front matter, then the sections."""
    config = model.config
    measurements = facts.all_measurements()
    params = sum(p.numel() for p in model.parameters())
    family = "FractalMAR" if set(config.kinds) == {"mar"} else "FractalAR" if set(config.kinds) == {"ar"} else "fractal"
    data = facts.dataset_name or facts.dataset or "its training images"
    colour = "grayscale" if config.channels == 1 else "RGB" if config.channels == 3 else f"{config.channels}-channel"
    classes = f"{config.num_classes} classes" if config.num_classes else "unconditional"
    if config.class_names:
        classes += f" ({', '.join(config.class_names)})"
    name = facts.repo_id or "path/to/this/folder"
    summary = facts.summary or (
        f"A {family} model ({params / 1e6:.2f}M parameters) of {data}: {config.img_size}x{config.img_size} "
        f"{colour} images, {classes}, generated pixel by pixel by transformers nested {config.num_levels} "
        f"levels deep, then a pixel head over the channels ({PAPER}, [arXiv:2502.17437]({ARXIV})).")

    lines = ["---", *yaml_lines(front_matter(model, facts, measurements)), "---", "",
             f"# {facts.title or config.name}", "", summary, "", "## Architecture", "",
             (f"Preset `{config.name}`; guiding pixel: {'yes' if config.guiding_pixel else 'no'}; "
              f"conditions per patch: {config.num_conds}."), "", *architecture_table(config), "",
             "## Measured", ""]
    if measurements:
        lines += ["| measurement | value | command |", "|---|---|---|"]
        lines += [f"| {m.name} | {shown(m)} | `{m.command}` |" for m in measurements]
        if facts.split:
            lines += ["", f"Measured on the {facts.split} split of {data}."]
    else:
        lines.append("No measurements were supplied when this folder was written.")
    lines += ["", "## Recommended sampling settings", "",
              "| setting | value |", "|---|---|",
              *[f"| {k} | {','.join(map(str, v)) if isinstance(v, list) else v} |" for k, v in settings.items()], "",
              ("`fractalgen` samples with these by default when it loads this folder (config.json, key "
               "`sampling`); any flag or argument given explicitly overrides them."), "",
              "## Use", "", *usage(name, settings, config), "",
              "## Files", "",
              ("- `config.json`: the official constructor's fields (`img_size_list`, `embed_dim_list`, "
               "`num_blocks_list`, `num_heads_list`, `generator_type_list`, `class_num`, ...) plus `channels`, "
               "`pixel_mean`, `pixel_std`, `name` and the recommended `sampling` settings."),
              (f"- `model.safetensors`: the weights ({stored_dtype}) under the official parameter names, "
               "the keys of the authors' state dict."),
              "- `README.md`: this card.", "",
              "## Training", "", facts.training or "Not recorded when this folder was written.", "",
              "## Intended use", "", facts.intended_use or (
                  f"Research and teaching: studying fractal (recursively nested autoregressive) generative "
                  f"models, their likelihood in bits/dim, sampling, inpainting and class editing on {data}. "
                  "It is not a general-purpose image generator."), "",
              "## Limitations", "",
              f"The model knows only {data}: it reproduces that distribution, its quirks and its biases, "
              "nothing else. The numbers above hold for the settings and data stated beside them and are "
              "not comparable with numbers measured on other data or resolutions. Guidance (cfg) trades "
              "diversity for fidelity." + (f" {facts.limitations}" if facts.limitations else ""), "",
              "## Citation", "",
              f"The method is from {PAPER} ([arXiv:2502.17437]({ARXIV})):", "",
              "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def facts_from_dict(d: dict) -> CardFacts:
    """CardFacts from a JSON object (e.g. `fractalgen export --card card.json`), naming unknown fields."""
    known = {f.name for f in dataclasses.fields(CardFacts)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"unknown model card field(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return CardFacts(**d)
