"""A small MNIST classifier for judging samples: does a digit sampled as class k look like a k?

Trained on the 4,500 training digits of the embedded split (never the 500 held-out ones) and
shipped as assets/mnist_classifier.safetensors (bf16, about 850 KB). Reusable pieces:

    classifier = load_mnist_classifier()
    predict(images, classifier)    # uint8 (N, 1, 28, 28) -> labels (N,)
    features(images, classifier)   # (N, 128) penultimate activations, e.g. for a "classifier FID"

Retrain with `python -m fractalgen.classifier` (about a minute on one CPU core).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError

CLASSIFIER_FILE = Path(__file__).parent / "assets" / "mnist_classifier.safetensors"
FEATURE_DIM = 128


class DigitClassifier(nn.Module):
    """Two conv blocks and a hidden layer: (N, 1, 28, 28) in [0, 1] -> logits (N, 10)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.hidden = nn.Linear(64 * 7 * 7, FEATURE_DIM)
        self.out = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (N, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 64, 7, 7)
        return F.relu(self.hidden(x.flatten(1)))  # (N, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def prepare(images) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) or (N, 28, 28), tensor or array -> float (N, 1, 28, 28) in [0, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise UserError(f"the MNIST classifier takes (N, 1, 28, 28) images, got {tuple(x.shape)}")
    return x.float().cpu() / 255.0


def load_mnist_classifier(path: str | Path = CLASSIFIER_FILE) -> DigitClassifier:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise UserError(f"MNIST classifier not found at {path} (train it: python -m fractalgen.classifier)")
    model = DigitClassifier()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


@torch.no_grad()
def features(images, classifier: DigitClassifier | None = None, batch_size: int = 500) -> torch.Tensor:
    """Penultimate activations (N, 128), float32."""
    classifier = classifier or load_mnist_classifier()
    x = prepare(images)
    return torch.cat([classifier.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def predict(images, classifier: DigitClassifier | None = None, batch_size: int = 500) -> torch.Tensor:
    """Predicted digit (N,) int64."""
    classifier = classifier or load_mnist_classifier()
    x = prepare(images)
    return torch.cat([classifier(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def read_labelled_pngs(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The `{index:05d}_class{label}.png` files that `fractalgen sample --out` writes: uint8 (N, 1, 28, 28), labels."""
    from .images import open_picture, to_channels

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"samples folder not found: {folder}")
    files = sorted(p for p in folder.glob("*_class*.png") if re.fullmatch(r"\d+_class\d+\.png", p.name))
    if not files:
        raise UserError(f"no *_classK.png sample files in {folder} (write them with fractalgen sample --out)")
    images, labels = [], []
    for p in files:
        images.append(np.asarray(to_channels(open_picture(p), 1)))  # (H, W), by the picture rules
        labels.append(int(p.stem.split("_class")[1]))
    if any(im.shape != (28, 28) for im in images):
        raise UserError(f"{folder}: the MNIST classifier needs 28x28 images")
    return torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels)


# ---- training (how the shipped file was made) -----------------------------------------------

def random_shift(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by up to 2 pixels: sampled digits are not always centred like MNIST's."""
    padded = F.pad(x, (max_shift,) * 4)
    out = torch.empty_like(x)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy:dy + 28, dx:dx + 28]
    return out


def train_classifier(epochs: int = 8, batch_size: int = 64, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train on the 4,500 training digits; returns the model and its held-out accuracy."""
    from .data import mnist_split

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_images, train_labels = mnist_split("train")
    val_images, val_labels = mnist_split("val")
    x, y = prepare(train_images), torch.from_numpy(train_labels)
    model = DigitClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for b in range(len(x) // batch_size):
            index = order[b * batch_size:(b + 1) * batch_size]
            loss = F.cross_entropy(model(random_shift(x[index], generator)), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    accuracy = float((predict(val_images, model) == torch.from_numpy(val_labels)).float().mean())
    return model, accuracy


def main():
    from safetensors.torch import save_file

    from .data import mnist_split

    torch.set_num_threads(1)
    model, accuracy = train_classifier()
    print(f"held-out accuracy on the 500 validation digits: {accuracy:.1%}")
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else CLASSIFIER_FILE
    save_file(state, str(path), metadata={"accuracy_val500": f"{accuracy:.4f}"})
    val_images, val_labels = mnist_split("val")
    predicted = predict(val_images, load_mnist_classifier(path))
    bf16_accuracy = float((predicted == torch.from_numpy(val_labels)).float().mean())
    print(f"held-out accuracy after the bf16 round trip: {bf16_accuracy:.1%}; written {path}")


if __name__ == "__main__":
    main()
