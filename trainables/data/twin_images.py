"""The `twin` dataset: the Gaussian-mixture twin (trainables.data.twin) of an image source, fitted
once and stored by content, and its training and test images drawn from the fitted mixture."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from trainables.config import DataConfig
from trainables.data.images import (
    SHAPE_CLASSES,
    TINY_CLASSES,
    DatasetError,
    ImageData,
    held_out_count,
    image_folder,
    scan_folder,
    shapes,
    tiny_images,
)
from trainables.data.twin import LowRankMixture, TwinSpec, fit_twin, load_or_fit
from trainables.storage import Place

TWIN_DRAW_OFFSET = 104_729  # the twin's own draws use seeds apart from the source's


def _source_shape_and_counts(data: DataConfig) -> tuple[tuple[int, int, int], dict[str, int]]:
    """(C, H, W) of the source images and each class's count of fitting images, without loading
    them (a folder is scanned: its unreadable files are named here)."""
    if data.twin_source == "folder":
        classes, files, (w, h) = scan_folder(data.root)
        counts = {c: sum(1 for _, k in files if k == i) for i, c in enumerate(classes)}
        return (3, h, w), {c: n - held_out_count(n) for c, n in counts.items()}
    size = data.image_size
    if data.twin_source == "tiny-images":
        if size < 8:
            raise DatasetError(f"twin of tiny-images needs data.image_size >= 8, got {size}")
        names = [c[0] for c in TINY_CLASSES]
    else:
        if size < 12:
            raise DatasetError(f"twin of shapes needs data.image_size >= 12, got {size}")
        names = [c[0] for c in SHAPE_CLASSES[: data.num_classes]]
    n = data.twin_source_images
    return (3, size, size), {c: n // len(names) + (i < n % len(names)) for i, c in enumerate(names)}


def check_twin(data: DataConfig) -> None:
    """Pre-flight of a twin: the source is readable, the rank is below the dimension, and every
    class has at least components x rank images (DatasetError naming the class or the key)."""
    shape, counts = _source_shape_and_counts(data)
    dim = int(np.prod(shape))
    if data.twin_rank >= dim:
        raise DatasetError(
            f"data.twin_rank must be below the images' dimension {dim} "
            f"({'x'.join(map(str, shape))}), got {data.twin_rank}"
        )
    need = data.twin_components * max(data.twin_rank, 1)
    short = {c: n for c, n in counts.items() if n < need}
    if short:
        name, n = next(iter(short.items()))
        fix = (
            "add images to it" if data.twin_source == "folder"
            else "raise data.twin_source_images"
        )  # fmt: skip
        raise DatasetError(
            f"twin: class {name!r} has {n} fitting images, fewer than data.twin_components x "
            f"data.twin_rank = {need}; {fix}, or lower data.twin_components or data.twin_rank"
        )


def _source(data: DataConfig) -> tuple[ImageData, dict]:
    """The source set's training images and what identifies them (the fit's key)."""
    if data.twin_source == "folder":
        classes, files, _ = scan_folder(data.root)
        digest = hashlib.sha256()
        for f, k in files:
            digest.update(f"{k}:{f.relative_to(f.parents[1])}:{f.stat().st_size}".encode())
        ident = {"name": "folder", "classes": classes, "files": digest.hexdigest()[:16],
                 "seed": data.seed}  # fmt: skip
        return image_folder(data.root, data.seed), ident
    n = data.twin_source_images
    ident = {"name": data.twin_source, "images": n, "image_size": data.image_size,
             "seed": data.seed}  # fmt: skip
    if data.twin_source == "tiny-images":
        return tiny_images(n, 2, data.image_size, data.seed), ident
    ident.update(difficulty=data.difficulty, num_classes=data.num_classes)
    return shapes(n, 2, data.image_size, data.seed, data.difficulty, data.num_classes), ident


def twin_of(
    data: DataConfig, cache_dir: str = "", log=lambda _: None
) -> tuple[LowRankMixture, tuple[str, ...]]:
    """The fitted twin a DataConfig names (from the store, or fitted into it) and its classes."""
    check_twin(data)
    source, ident = _source(data)
    spec = TwinSpec(ident, data.twin_components, data.twin_rank, float(data.twin_shared),
                    data.seed)  # fmt: skip
    folder = Place(cache_dir or "~/.cache/sc-guidance") / "twins"

    def fit() -> LowRankMixture:
        return fit_twin(
            source.x, source.y, source.num_classes, data.twin_components, data.twin_rank,
            float(data.twin_shared), data.seed,
        )  # fmt: skip

    mixture, _ = load_or_fit(spec, folder, fit, log)
    return mixture, source.class_names


def _draw(mixture: LowRankMixture, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """n samples, balanced over the classes in a seeded order."""
    y = torch.arange(n) % mixture.num_classes
    y = y[torch.randperm(n, generator=gen)]
    return mixture.sample(n, generator=gen, y=y)


def twin_images(data: DataConfig, cache_dir: str = "") -> ImageData:
    """The twin's training and held-out images (samples of the fitted mixture, not clipped to
    [0, 1]: they are exactly the mixture's) with the mixture itself as `dist`."""
    mixture, class_names = twin_of(data, cache_dir)
    gen = torch.Generator().manual_seed(data.seed + TWIN_DRAW_OFFSET)
    x, y = _draw(mixture, data.num_train, gen)
    tx, ty = _draw(mixture, data.num_test, gen)
    return ImageData(x, y, tx, ty, mixture.num_classes, class_names, dist=mixture)
