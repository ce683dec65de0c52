"""Datasets (digits, CIFAR-10 python batches, image folders), epoch order and augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cepd_deploy.compress.data import augment, batches, epoch_order, load_data
from cepd_deploy.errors import CEPDError


def test_digits_fixed_split_and_shapes():
    a, b = load_data("digits"), load_data("digits")
    assert (len(a.train), len(a.test), a.num_classes, a.shape) == (1437, 360, 10, (3, 32, 32))
    xa, ya = next(batches(a.test, torch.arange(360), 360))
    xb, yb = next(batches(b.test, torch.arange(360), 360))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)  # the split never depends on a seed
    assert xa.shape == (360, 3, 32, 32) and torch.equal(xa[:, 0], xa[:, 2])
    assert torch.bincount(ya, minlength=10).min() >= 35  # stratified: 36 per class
    xt, _ = next(batches(a.train, torch.arange(1437), 1437))
    assert abs(float(xt.mean())) < 1e-4 and abs(float(xt.std()) - 1) < 1e-3  # normalised


def test_train_limit():
    data = load_data("digits", train_limit=50)
    assert len(data.train) == 50
    x, y = next(batches(data.train, torch.arange(50), 64))
    assert x.shape[0] == 50 and y.shape == (50,)
    with pytest.raises(CEPDError, match="limit"):
        load_data("digits", train_limit=0)


def _write_cifar(root, n=4, bad=None):
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [int(x) for x in rng.integers(0, 10, n)]}  # fmt: skip
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    if bad == "missing":
        (root / "data_batch_3").unlink()
    elif bad == "garbage":
        (root / "test_batch").write_bytes(b"not a pickle at all")
    elif bad == "code":
        (root / "test_batch").write_bytes(pickle.dumps(print))  # a global outside the allow-list


def test_cifar10_python_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_data(f"cifar10:{tmp_path}")  # the parent folder works too
    assert (len(data.train), len(data.test), data.shape, data.flip) == (20, 4, (3, 32, 32), True)
    x, y = next(batches(data.train, torch.arange(20), 8))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and int(y.max()) < 10


@pytest.mark.parametrize("bad,match", [("missing", "data_batch_3 missing"),
                                       ("garbage", "not a CIFAR-10 python batch"),
                                       ("code", "forbidden object")])  # fmt: skip
def test_cifar10_errors(tmp_path, bad, match):
    _write_cifar(tmp_path / "c", bad=bad)
    with pytest.raises(CEPDError, match=match) as err:
        load_data(f"cifar10:{tmp_path / 'c'}")
    assert "\n" not in str(err.value)


def test_imagefolder(tmp_path):
    image = pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    for split, per in (("train", 3), ("val", 1)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(per):
                image.new("RGB", (20 + k, 12), (40 * k, 80, 120)).save(tmp_path / split / c / f"{k}.png")
    data = load_data(f"imagefolder:{tmp_path}", image_size=16)
    assert (len(data.train), len(data.test), data.num_classes, data.shape) == (6, 2, 2, (3, 16, 16))
    x, y = next(batches(data.train, torch.arange(6), 6))
    assert x.shape == (6, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_imagefolder_errors(tmp_path):
    pytest.importorskip("PIL.Image", reason="Pillow is not installed")
    with pytest.raises(CEPDError, match="not found"):
        load_data(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(CEPDError, match="train/ and val/"):
        load_data(f"imagefolder:{tmp_path}")
    (tmp_path / "val" / "a").mkdir(parents=True)
    with pytest.raises(CEPDError, match="at least two class folders"):
        load_data(f"imagefolder:{tmp_path}")


@pytest.mark.parametrize("spec", ["mnist", "cifar10", "digits:x", "imagefolder:"])
def test_unknown_data(spec):
    with pytest.raises(CEPDError, match="unknown --data"):
        load_data(spec)


def test_cifar_path_missing(tmp_path):
    with pytest.raises(CEPDError, match="not a CIFAR-10 python folder"):
        load_data(f"cifar10:{tmp_path / 'absent'}")


def test_epoch_order_is_seeded_and_shards_cover_everything():
    a, b = epoch_order(10, 3, 1), epoch_order(10, 3, 1)
    assert torch.equal(a, b) and not torch.equal(a, epoch_order(10, 3, 2))
    assert sorted(a.tolist()) == list(range(10))
    shards = [epoch_order(11, 0, 0, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6  # padded like DistributedSampler
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(11))


def test_augment_is_deterministic_and_shifts():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    a = augment(x, torch.Generator().manual_seed(0), 2, True)
    b = augment(x, torch.Generator().manual_seed(0), 2, True)
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(augment(x, torch.Generator(), 0, False), x)
