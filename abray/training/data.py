"""Data sets. `digits` (scikit-learn's 8x8 handwritten digits, shipped with scikit-learn: no download) is
the default everywhere.

Every data set is an in-memory or on-disk `Dataset` pair (train, test); batch order comes from
`batch_indices`, a pure function of (seed, epoch), so a run, the delay simulator and the parameter
server all see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

DIGITS_SPLIT_SEED = 0  # fixed: every run, whatever its own seed, sees the same train/test split
DIGITS_TEST_FRACTION = 0.2
CLASSES = {"digits": 10, "cifar10": 10, "imagenet": 1000}  # ImageNet's as published; a folder may hold fewer


@dataclass
class DataSplit:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]


def digits(validation: bool = False) -> DataSplit:
    """1,797 8x8 grey images, 10 classes, scaled to [0, 1]; a fixed 80/20 stratified train/test split.

    With `validation=True` the test set is replaced by a validation set, a fixed stratified 20% of the
    training set (the rest is the training set): tune on that, report on the test set.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    if validation:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x_tr, y_tr, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y_tr
        )
    return DataSplit(
        train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
        test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
        num_classes=CLASSES["digits"],
        input_shape=(1, 8, 8),
    )


def batch_indices(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[np.ndarray]:
    """The batches of one epoch: a permutation of range(n) drawn from (seed, epoch), cut in order."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if drop_last else n
    return [perm[i : i + batch_size] for i in range(0, stop, batch_size)]


def collate(dataset: Dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the examples at `indices` into one (inputs, labels) batch."""
    if isinstance(dataset, TensorDataset):
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return dataset.tensors[0][idx], dataset.tensors[1][idx]
    items = [dataset[int(i)] for i in indices]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


class DataError(RuntimeError):
    """A data set that cannot be loaded as configured (missing files, wrong layout)."""


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def cifar10(root: str, download: bool = False) -> DataSplit:
    """CIFAR-10 from torchvision's files under `root`, with the usual augmentation on the training set
    (4-pixel padded random crops and horizontal flips). Downloads only when `download` is True.

    Augmentation draws from torch's global generator, which the training run seeds, so a run is
    deterministic given its seed.
    """
    import torchvision
    from torchvision import transforms as T

    normalize = T.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test_tf = T.Compose([T.ToTensor(), normalize])
    try:
        train = torchvision.datasets.CIFAR10(root, train=True, transform=train_tf, download=download)
        test = torchvision.datasets.CIFAR10(root, train=False, transform=test_tf, download=download)
    except RuntimeError as err:
        raise DataError(f"CIFAR-10 not found under {root!r} ({err}); set download: true to fetch it") from None
    return DataSplit(train=train, test=test, num_classes=CLASSES["cifar10"], input_shape=(3, 32, 32))


def imagenet(root: str) -> DataSplit:
    """ImageNet (or any data set in that layout) from `root`/train and `root`/val class folders,
    with RandomResizedCrop(224) and flips for training, Resize(256) and CenterCrop(224) for testing."""
    from pathlib import Path

    import torchvision
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    for split in ("train", "val"):
        if not (Path(root) / split).is_dir():
            raise DataError(f"ImageNet root {root!r} must hold train/ and val/ folders of class folders; "
                            f"{split}/ is missing")
    train = torchvision.datasets.ImageFolder(str(Path(root) / "train"), transform=train_tf)
    test = torchvision.datasets.ImageFolder(str(Path(root) / "val"), transform=test_tf)
    if train.classes != test.classes:
        raise DataError(f"ImageNet train/ and val/ under {root!r} hold different class folders")
    return DataSplit(train=train, test=test, num_classes=len(train.classes), input_shape=(3, 224, 224))
