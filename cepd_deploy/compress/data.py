"""Datasets for compression: ``digits`` (embedded), ``cifar10:PATH``, ``imagefolder:PATH``.

Every dataset yields normalised float images (C, H, W) and integer labels; batches come from
:func:`batches`, whose order depends only on (seed, epoch, rank), so a resumed or distributed
run sees exactly the batches an uninterrupted single run would.

>>> data = load_data("digits")
>>> len(data.train), len(data.test), data.num_classes, data.shape
(1437, 360, 10, (3, 32, 32))
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cepd_deploy.errors import CEPDError

DIGITS_TEST = 360  # the fixed digits split: 1437 train / 360 test, stratified, seed 0
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


class TensorImages(Dataset):
    """Images held in memory (uint8 or float, N x C x H x W), normalised per batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> None:
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x, y = self.get_batch(torch.tensor([i]))
        return x[0], y[0]

    def get_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[index].float()
        if self.images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std, self.labels[index]


@dataclass
class Data:
    """A train/test pair with what the training loop needs to know about it."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    shape: tuple[int, int, int]
    shift: int  # random translation (pixels) of the training augmentation
    flip: bool  # random horizontal flips (off for digits: a flipped digit is another glyph)


def load_data(
    spec: str,
    *,
    image_size: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> Data:
    """Parse a ``--data`` value: ``digits``, ``cifar10:PATH`` or ``imagefolder:PATH``.

    ``image_size`` resizes imagefolder images (default 224); ``train_limit`` / ``test_limit``
    keep only the first N training / test images (quick runs and tests).
    """
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        data = _digits()
    elif kind == "cifar10" and path:
        data = _cifar10(Path(path))
    elif kind == "imagefolder" and path:
        data = _imagefolder(Path(path), image_size or 224)
    else:
        raise CEPDError(f"unknown --data {spec!r}: use digits, cifar10:PATH or imagefolder:PATH")
    for split, limit in (("train", train_limit), ("test", test_limit)):
        if limit is not None:
            if limit < 1:
                raise CEPDError(f"{split} limit must be >= 1, got {limit}")
            ds = getattr(data, split)
            setattr(data, split, torch.utils.data.Subset(ds, range(min(limit, len(ds)))))
    return data


# -- digits ----------------------------------------------------------------------------------
def _digits() -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target)
    tr, te = train_test_split(range(len(y)), test_size=DIGITS_TEST, random_state=0, stratify=d.target)
    tr, te = torch.tensor(sorted(tr)), torch.tensor(sorted(te))
    mean, std = float(x[tr].mean()), float(x[tr].std())
    norm = ((mean,) * 3, (std,) * 3)
    return Data("digits", TensorImages(x[tr], y[tr], *norm), TensorImages(x[te], y[te], *norm), 10,
                (3, 32, 32), shift=2, flip=False)  # fmt: skip


# -- CIFAR-10 --------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """CIFAR batches hold dicts of numpy arrays: allow nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
        x = torch.as_tensor(d[b"data"]).to(torch.uint8).reshape(-1, 3, 32, 32)
        y = torch.as_tensor(d[b"labels"], dtype=torch.long)
    except Exception as exc:  # any failure here means a damaged or foreign file
        raise CEPDError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: {exc})") from None
    if len(x) != len(y) or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < 10):
        raise CEPDError(f"{path}: CIFAR-10 batch with inconsistent images/labels")
    return x, y


def _cifar10(root: Path) -> Data:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise CEPDError(f"{root}: not a CIFAR-10 python folder ({missing[0]} missing)")
    parts = [_cifar_batch(root / n) for n in names]
    xtr = torch.cat([p[0] for p in parts[:5]])
    ytr = torch.cat([p[1] for p in parts[:5]])
    norm = (CIFAR_MEAN, CIFAR_STD)
    return Data("cifar10", TensorImages(xtr, ytr, *norm), TensorImages(*parts[5], *norm), 10,
                (3, 32, 32), shift=4, flip=True)  # fmt: skip


# -- image folders ---------------------------------------------------------------------------
class FolderImages(Dataset):
    """Class-folder images, resized (shorter side) and centre-cropped to ``size``, normalised."""

    def __init__(self, files: list[tuple[Path, int]], size: int) -> None:
        self.files, self.size = files, size
        self.mean = torch.tensor(IMAGENET_MEAN).reshape(-1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).reshape(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                scale = self.size / min(w, h)
                im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                               Image.BILINEAR)  # fmt: skip
                left, top = (im.size[0] - self.size) // 2, (im.size[1] - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                raw = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
        except OSError as exc:
            raise CEPDError(f"{path}: unreadable image ({exc})") from None
        x = raw.reshape(self.size, self.size, 3).permute(2, 0, 1).float() / 255.0
        return (x - self.mean) / self.std, label


def _imagefolder(root: Path, size: int) -> Data:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise CEPDError("--data imagefolder needs Pillow (pip install pillow)") from None
    if not root.is_dir():
        raise CEPDError(f"image folder not found: {root}")
    train_dir = root / "train"
    test_dir = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise CEPDError(f"{root}: expected train/ and val/ (or test/) folders of class folders")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise CEPDError(f"{train_dir}: needs at least two class folders, found {len(classes)}")
    train, test = _files(train_dir, classes), _files(test_dir, classes)
    return Data("imagefolder", FolderImages(train, size), FolderImages(test, size), len(classes),
                (3, size, size), shift=size // 8, flip=True)  # fmt: skip


def _files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise CEPDError(f"{folder}: class folder {extra[0]!r} is not among the training classes")
    out = [(f, k) for k, c in enumerate(classes) if (folder / c).is_dir()
           for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]  # fmt: skip
    if not out:
        raise CEPDError(f"{folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


# -- batches ---------------------------------------------------------------------------------
def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This rank's sample indices for one epoch: a seeded permutation, padded to a multiple of
    ``world`` (as DistributedSampler does) and dealt out round-robin."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    if world > 1:
        total = -(-n // world) * world
        perm = torch.cat([perm, perm[: total - n]])
    return perm[rank::world]


def batches(
    ds: Dataset, index: torch.Tensor, batch_size: int, *, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``ds`` in the order of ``index`` (in-memory data skip the DataLoader)."""
    base, sub = ds, None
    if isinstance(ds, torch.utils.data.Subset):
        base, sub = ds.dataset, torch.as_tensor(list(ds.indices))
    if isinstance(base, TensorImages):
        for k in range(0, len(index), batch_size):
            idx = index[k : k + batch_size]
            yield base.get_batch(idx if sub is None else sub[idx])
        return
    chunks = [index[k : k + batch_size].tolist() for k in range(0, len(index), batch_size)]
    yield from DataLoader(ds, batch_sampler=chunks, num_workers=workers)


def augment(x: torch.Tensor, g: torch.Generator, shift: int, flip: bool) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (zero fill) and optional horizontal flip."""
    if shift:
        n, _, h, w = x.shape
        padded = F.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=g).tolist()
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=g).tolist()
        x = torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx))])
    if flip:
        mask = torch.rand(x.shape[0], generator=g) < 0.5
        x = torch.where(mask.reshape(-1, 1, 1, 1), x.flip(-1), x)
    return x
