"""Image datasets as tensors in [0, 1]: CIFAR-10/100 (torchvision, local root), class-per-folder
image
sets, and `tiny-images`, a synthetic class-conditional set the platform draws itself (CPU tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from trainables import names
from trainables.config import DataConfig

IMAGE_DATASETS = names.IMAGE_DATASETS  # one list, read by spec validation without torch
MIN_PER_CLASS = 10  # images a class of a folder set needs (scan_folder)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".gif", ".tif", ".tiff"}


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message says where to put it or which option fixes
    it."""


@dataclass
class ImageData:
    """Training and held-out images [N, C, H, W] in [0, 1] with labels."""

    x: torch.Tensor
    y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    # The exact distribution the images are drawn from (the twin: trainables.data.twin), or None
    dist: Any = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])


# ---- tiny-images: one colour and one shape per class, random position, size and brightness
# ----------
TINY_CLASSES = (
    ("red square", (0.9, 0.15, 0.15), "square"),
    ("green disc", (0.15, 0.85, 0.2), "disc"),
    ("blue bar", (0.2, 0.3, 0.95), "hbar"),
    ("yellow cross", (0.95, 0.9, 0.1), "cross"),
)


def _tiny_image(
    kind: str, colour: tuple[float, float, float], size: int, rng: np.random.Generator
) -> np.ndarray:
    """One image [3, size, size]: a coloured shape on a dark, slightly noisy background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    half = rng.uniform(0.18, 0.28) * size
    cy, cx = rng.uniform(half, size - half, size=2)
    if kind == "square":
        mask = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    elif kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
    elif kind == "hbar":
        mask = (np.abs(yy - cy) <= half / 2.5) & (np.abs(xx - cx) <= half * 1.4)
    else:  # cross
        arm = half / 3
        mask = ((np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= half)) | (
            (np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= half)
        )
    brightness = rng.uniform(0.8, 1.0)
    img = np.empty((3, size, size), dtype=np.float32)
    for c in range(3):
        img[c] = np.where(mask, colour[c] * brightness, 0.1)
    img += rng.normal(0.0, 0.03, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def tiny_images(num_train: int, num_test: int, size: int = 16, seed: int = 0) -> ImageData:
    """Synthetic 4-class images (balanced; deterministic for the seed)."""
    if size < 8:
        raise DatasetError(f"tiny-images needs data.image_size >= 8, got {size}")
    rng = np.random.default_rng(seed)
    k = len(TINY_CLASSES)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % k
        rng.shuffle(y)
        x = np.stack([_tiny_image(TINY_CLASSES[c][2], TINY_CLASSES[c][1], size, rng) for c in y])
        return torch.from_numpy(x), torch.from_numpy(y).long()

    x, y = draw(num_train)
    tx, ty = draw(num_test)
    return ImageData(x, y, tx, ty, k, tuple(c[0] for c in TINY_CLASSES))


# ---- shapes: up to 10 classes that share colours, shapes and textures, with a difficulty knob
# ----------
# Every class shares its colour with two others and its shape with one: no single cue separates
# them, so a classifier must combine colour, shape and texture. data.difficulty in [0, 1] adds
# within-class variation (colour jitter, size and brightness), a distractor shape, background
# clutter and pixel noise; 0 is clean.
SHAPE_COLOURS = {
    "red": (0.9, 0.15, 0.15), "green": (0.15, 0.8, 0.2), "blue": (0.2, 0.3, 0.95),
    "yellow": (0.95, 0.85, 0.1),
}  # fmt: skip
SHAPE_CLASSES = (
    ("red square", "red", "square", "solid"),
    ("red disc", "red", "disc", "solid"),
    ("green square", "green", "square", "striped"),
    ("green disc", "green", "disc", "solid"),
    ("blue bar", "blue", "hbar", "solid"),
    ("blue cross", "blue", "cross", "striped"),
    ("yellow bar", "yellow", "hbar", "striped"),
    ("yellow triangle", "yellow", "triangle", "solid"),
    ("red triangle", "red", "triangle", "striped"),
    ("green cross", "green", "cross", "solid"),
)
SHAPE_KINDS = ("square", "disc", "hbar", "cross", "triangle")


def _shape_mask(kind: str, size: int, half: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean [size, size] mask of one shape of half-width half at a random place."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(half, size - half, size=2)
    if kind == "square":
        return (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
    if kind == "disc":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= half**2
    if kind == "hbar":
        return (np.abs(yy - cy) <= half / 2.5) & (np.abs(xx - cx) <= half * 1.4)
    if kind == "cross":
        arm = half / 3
        return ((np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= half)) | (
            (np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= half)
        )
    top = cy - half  # triangle: apex up, base at cy + half
    return (yy >= top) & (yy <= cy + half) & (np.abs(xx - cx) <= (yy - top) / 2)


def _shape_image(
    spec: tuple[str, str, str, str], size: int, difficulty: float, rng: np.random.Generator
) -> np.ndarray:
    """One image [3, size, size] of a class at a difficulty (see SHAPE_CLASSES)."""
    _, colour_name, kind, texture = spec
    d = difficulty
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    level = rng.uniform(0.05, 0.05 + 0.3 * d)  # background brightness and a soft gradient
    slope = rng.normal(0.0, 0.15 * d, size=2) / size
    background = level + slope[0] * (yy - size / 2) + slope[1] * (xx - size / 2)
    img = np.repeat(background[None], 3, axis=0).astype(np.float32)
    if rng.random() < d:  # a distractor: another shape in another colour, smaller and dimmer
        other = _shape_mask(str(rng.choice(SHAPE_KINDS)), size, rng.uniform(0.1, 0.16) * size, rng)
        tint = np.array(SHAPE_COLOURS[str(rng.choice(list(SHAPE_COLOURS)))]) * 0.6
        img = np.where(other[None], tint[:, None, None], img).astype(np.float32)
    mask = _shape_mask(kind, size, rng.uniform(0.2 - 0.05 * d, 0.3) * size, rng)
    colour = np.array(SHAPE_COLOURS[colour_name]) + rng.normal(0.0, 0.22 * d, size=3)
    colour = np.clip(colour * rng.uniform(1.0 - 0.35 * d, 1.0), 0.0, 1.0)
    shade = np.ones((size, size), dtype=np.float32)
    if texture == "striped":
        phase = rng.integers(0, 4)
        shade = np.where(((xx + yy + phase) // 2) % 2 == 0, 1.0, 0.45).astype(np.float32)
    img = np.where(mask[None], colour[:, None, None] * shade[None], img).astype(np.float32)
    img += rng.normal(0.0, 0.03 + 0.12 * d, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def shapes(
    num_train: int,
    num_test: int,
    size: int = 16,
    seed: int = 0,
    difficulty: float = 0.5,
    num_classes: int = 10,
) -> ImageData:
    """Synthetic images of the first num_classes SHAPE_CLASSES (balanced; deterministic for the
    seed) at a difficulty in [0, 1]."""
    if size < 12:
        raise DatasetError(f"shapes needs data.image_size >= 12, got {size}")
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise DatasetError(f"shapes has 2 to {len(SHAPE_CLASSES)} classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    classes = SHAPE_CLASSES[:num_classes]

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.arange(n) % num_classes
        rng.shuffle(y)
        x = np.stack([_shape_image(classes[c], size, difficulty, rng) for c in y])
        return torch.from_numpy(x), torch.from_numpy(y).long()

    x, y = draw(num_train)
    tx, ty = draw(num_test)
    return ImageData(x, y, tx, ty, num_classes, tuple(c[0] for c in classes))


# ---- CIFAR
# ----------------------------------------------------------------------------------------
CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _cifar_root(root: str) -> Path:
    return Path(root or "~/.cache/sc-guidance/data").expanduser().resolve()


def check_cifar(name: str, root: str, download: bool) -> None:
    """Raise DatasetError (before any work) when CIFAR is not under root and downloading is off."""
    folder = _cifar_root(root) / CIFAR_FOLDERS[name]
    if not download and not folder.is_dir():
        raise DatasetError(
            f"{name} not found: expected {folder}; put the extracted python version of {name} "
            f"under data.root ({_cifar_root(root)}) or set data.download: true"
        )


def cifar(name: str, root: str, download: bool, limit: int = 0) -> ImageData:
    """CIFAR-10 / CIFAR-100 through torchvision (train split for training, test split held out)."""
    from torchvision import datasets

    check_cifar(name, root, download)
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train = cls(str(_cifar_root(root)), train=True, download=download)
        test = cls(str(_cifar_root(root)), train=False, download=download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(
            f"{name} under {_cifar_root(root)} cannot be read ({exc}); "
            "re-extract it there or set data.download: true"
        ) from None

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 255.0
        y = torch.as_tensor(ds.targets).long()
        return (x[:limit], y[:limit]) if limit else (x, y)

    x, y = tensors(train)
    tx, ty = tensors(test)
    return ImageData(x, y, tx, ty, len(train.classes), tuple(train.classes))


# ---- class-per-folder image sets
# ------------------------------------------------------------------
def class_folders(root: str) -> list[str]:
    """The class folders of an image folder set, sorted (no image is read); DatasetError when the
    folder does not exist."""
    base = Path(root).expanduser()
    if not root or not base.is_dir():
        raise DatasetError(
            f"image folder {str(base)!r} does not exist; "
            "set data.root to a folder with one sub-folder of images per class"
        )
    return sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan_folder(root: str) -> tuple[list[str], list[tuple[Path, int]], tuple[int, int]]:
    """Classes, (file, label) pairs and the common image size; DatasetError on anything unusable
    (every image is read through)."""

    base = Path(root).expanduser()
    classes = class_folders(root)
    files = [
        (f, k)
        for k, c in enumerate(classes)
        for f in sorted((base / c).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(classes) < 2 or not files:
        raise DatasetError(
            f"image folder {base} has {len(classes)} class folders and {len(files)} images; "
            "it needs one sub-folder of images per class (at least 2 classes)"
        )
    empty = [c for k, c in enumerate(classes) if not any(label == k for _, label in files)]
    if empty:
        raise DatasetError(
            f"image folder {base}: class folders without images: {empty}; remove them or add images"
        )
    counts = {c: sum(1 for _, label in files if label == k) for k, c in enumerate(classes)}
    few = {c: n for c, n in counts.items() if n < MIN_PER_CLASS}
    if few:
        name, n = next(iter(few.items()))
        raise DatasetError(
            f"image folder {base}: class {name!r} has {n} images, fewer than the {MIN_PER_CLASS} "
            "a class needs (a held-out tenth for the test and validation splits, and at least two "
            "training images for its reference statistics); add images or remove the class"
        )
    sizes: dict[tuple[int, int], Path] = {}
    for f, _ in files:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, f)
                im.verify()  # the whole file: a truncated image fails here, not in a trial
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for unreadable files
            raise DatasetError(
                f"image folder {base}: {f} cannot be read ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}); replace or remove it"
            ) from None
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in list(sizes.items())[:3])
        raise DatasetError(
            f"image folder {base} mixes image sizes: {shown}; resize every image to one size first"
        )
    return classes, files, next(iter(sizes))


HELD_OUT_FRACTION = 0.1  # of each class of a folder set, for the test and validation splits


def held_out_count(images: int, fraction: float = HELD_OUT_FRACTION) -> int:
    """How many of a class's images a folder set holds out."""
    return int(round(images * fraction))


def image_folder(root: str, seed: int = 0, test_fraction: float = HELD_OUT_FRACTION) -> ImageData:
    """A class-per-folder image set as RGB; a stratified, seeded 10 % of each class is held out."""

    classes, files, _ = scan_folder(root)
    x = torch.stack(
        [
            torch.from_numpy(
                np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0
            ).permute(2, 0, 1)
            for f, _ in files
        ]
    )
    y = torch.tensor([k for _, k in files])
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for k in range(len(classes)):
        members = rng.permutation(np.flatnonzero(y.numpy() == k))
        test[members[: held_out_count(len(members), test_fraction)]] = True
    test_t = torch.from_numpy(test)
    return ImageData(x[~test_t], y[~test_t], x[test_t], y[test_t], len(classes), tuple(classes))


def check_images(data_config: DataConfig) -> None:
    """Pre-flight: raise DatasetError if the dataset cannot be loaded (nothing is read in full)."""
    if data_config.name in CIFAR_FOLDERS:
        check_cifar(data_config.name, data_config.root, data_config.download)
    elif data_config.name == "folder":
        scan_folder(data_config.root)
    elif data_config.name == "tiny-images":
        if data_config.image_size < 8:
            raise DatasetError(
                f"tiny-images needs data.image_size >= 8, got {data_config.image_size}"
            )
    elif data_config.name == "shapes" and data_config.image_size < 12:
        raise DatasetError(f"shapes needs data.image_size >= 12, got {data_config.image_size}")


def make_images(data_config: DataConfig) -> ImageData:
    """Load the image dataset a DataConfig names (the twin: trainables.data.sets)."""
    name = data_config.name
    if name == "tiny-images":
        return tiny_images(
            data_config.num_train, data_config.num_test, data_config.image_size, data_config.seed
        )
    if name == "shapes":
        return shapes(
            data_config.num_train,
            data_config.num_test,
            data_config.image_size,
            data_config.seed,
            data_config.difficulty,
            data_config.num_classes,
        )
    if name in CIFAR_FOLDERS:
        return cifar(name, data_config.root, data_config.download)
    if name == "folder":
        return image_folder(data_config.root, data_config.seed)
    raise DatasetError(f"unknown image dataset {name!r}; valid: {list(IMAGE_DATASETS)}")
