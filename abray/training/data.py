"""Data sets: the offline task suite (shipped or generated, no download) and the torchvision data sets for
users who have the files. `digits` (scikit-learn's 8x8 handwritten digits) is the default everywhere.

The suite (`abray.training.tasks` pairs each with its models):
- `digits`: scikit-learn's 1,797 8x8 digits;
- `mnist10k`: 10,000 28x28 MNIST digits shipped with abray (datasets/mnist_10k.npz; licence and attribution in
  datasets/MNIST_LICENSE.md), and `mnist`, the full 70,000 from torchvision's files under `data_root`;
- `teacher`, `teacher_deep`: Gaussian inputs labelled by a fixed random teacher network (`teacher_student`, whose
  width, depth and label noise dial the difficulty);
- `runner_up`: token sequences labelled by their second most frequent token, for a small transformer.

Every data set is an in-memory or on-disk `Dataset` pair (train, test); those held in memory have a fixed
stratified train/test split and, with `validation=True`, a validation split inside the training set in place of
the test set (tune on that, report on the test set). Batch order comes from `batch_indices`, a pure function of
(seed, epoch), so a run, the delay simulator and the parameter server all see the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

SPLIT_SEED = 0  # fixed: every run, whatever its own seed, sees the same train/test split
TEST_FRACTION = 0.2  # of the data set for the test split, then of the training set for the validation split

MNIST10K_FILE = Path(__file__).parent / "datasets" / "mnist_10k.npz"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # of MNIST's training images, the usual input normalisation

TEACHER_INPUTS = 32  # the suite's teacher tasks all take 32 Gaussian inputs, so one student model fits them all
SEQUENCE_LENGTH, SEQUENCE_VOCAB = 16, 8
CLASSES = {"digits": 10, "mnist10k": 10, "mnist": 10, "teacher": 10, "teacher_deep": 10, "runner_up": SEQUENCE_VOCAB,
           "cifar10": 10, "imagenet": 1000}  # ImageNet's as published; a folder may hold fewer


@dataclass
class DataSplit:
    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]


def split_in_memory(x: np.ndarray, y: np.ndarray, num_classes: int, validation: bool = False) -> DataSplit:
    """A fixed stratified train/test split of arrays (TEST_FRACTION for test); with `validation`, the test set is
    replaced by a validation set, a fixed stratified TEST_FRACTION of the training set, which the rest trains on."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    if validation:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x_tr, y_tr, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y_tr
        )
    return DataSplit(
        train=TensorDataset(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr)),
        test=TensorDataset(torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te)),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
    )


def digits(validation: bool = False) -> DataSplit:
    """1,797 8x8 grey images, 10 classes, scaled to [0, 1]; a fixed 80/20 stratified train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return split_in_memory(x, bunch.target.astype(np.int64), CLASSES["digits"], validation)


def _normalised_mnist(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD)[:, None]


def mnist10k(validation: bool = False) -> DataSplit:
    """The 10,000 MNIST digits shipped with abray (28x28, normalised with MNIST's mean and std): a fixed
    stratified 8,000 / 2,000 train/test split; the validation split takes 1,600 of the 8,000."""
    with np.load(MNIST10K_FILE) as f:
        images, labels = f["images"], f["labels"]
    return split_in_memory(_normalised_mnist(images), labels.astype(np.int64), 10, validation)


def mnist(root: str, download: bool = False, validation: bool = False) -> DataSplit:
    """The full MNIST (60,000 training and 10,000 test digits) from torchvision's files under `root`
    (`root/MNIST/raw/*-ubyte`), normalised like `mnist10k` and held in memory. Downloads only when `download` is
    True. With `validation`, a fixed stratified 20% of the training digits replaces the test set."""
    import torchvision

    try:
        sets = [torchvision.datasets.MNIST(root, train=train, download=download) for train in (True, False)]
    except RuntimeError as err:
        raise DataError(f"MNIST not found under {root!r} ({err}); torchvision's files go in "
                        f"{root}/MNIST/raw/, or set download: true to fetch them") from None
    (x_tr, y_tr), (x_te, y_te) = [(_normalised_mnist(s.data.numpy()), s.targets.numpy().astype(np.int64))
                                  for s in sets]
    if validation:
        return split_in_memory(x_tr, y_tr, 10, validation=False)  # the 80/20 cut of the training set
    return DataSplit(train=TensorDataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr)),
                     test=TensorDataset(torch.from_numpy(x_te), torch.from_numpy(y_te)),
                     num_classes=10, input_shape=(1, 28, 28))


def teacher_student(*, inputs: int = TEACHER_INPUTS, width: int = 32, depth: int = 1, classes: int = 10,
                    examples: int = 6_000, margin: float = 0.5, label_noise: float = 0.0, gain: float = 1.0,
                    seed: int = 0, validation: bool = False) -> DataSplit:
    """Gaussian inputs labelled by a fixed random teacher network: the difficulty is a dial.

    The teacher maps x ~ N(0, I_inputs) through `depth` tanh layers of `width` units (weights N(0, gain^2 /
    fan_in): more depth, width or gain make the decision boundaries more convoluted) and a linear read-out to
    `classes` logits, centred per class so the classes are about equally frequent; the label is the largest
    logit. Of the inputs drawn of each class, the fraction `margin` nearest a decision boundary (smallest gap
    between the two largest logits) is dropped, so a larger margin makes the classes easier to separate and every
    class has the same number of examples; then each label is
    replaced by a uniformly random class with probability `label_noise` (accuracy above 1 - label_noise *
    (classes - 1) / classes is out of reach). The same arguments give the same task.
    """
    if depth < 0 or width < 1 or inputs < 1 or classes < 2 or examples < 10 * classes:
        raise ValueError(f"need depth >= 0, width >= 1, inputs >= 1, classes >= 2 and examples >= 10 * classes; "
                         f"got depth={depth}, width={width}, inputs={inputs}, classes={classes}, examples={examples}")
    for name, value in (("margin", margin), ("label_noise", label_noise)):
        if not 0.0 <= value <= (0.9 if name == "margin" else 1.0):
            raise ValueError(f"{name} must be in [0, {0.9 if name == 'margin' else 1}], got {value!r}")
    rng = np.random.default_rng([seed, inputs, width, depth, classes])
    layers = [rng.standard_normal((inputs if i == 0 else width, width)) * (gain / np.sqrt(inputs if i == 0 else width))
              for i in range(depth)]
    readout = rng.standard_normal((width if depth else inputs, classes)) / np.sqrt(width if depth else inputs)

    def teacher(x):
        for w in layers:
            x = np.tanh(x @ w)
        return x @ readout

    centre = teacher(rng.standard_normal((4096, inputs))).mean(0)  # so the classes are about equally frequent
    per_class = -(-examples // classes)
    wanted = int(np.ceil(per_class / (1.0 - margin)))  # drawn of each class, of which the widest-margin are kept
    xs, gaps, labels = [], [], []
    counts = np.zeros(classes, dtype=int)
    while counts.min() < wanted:
        x = rng.standard_normal((4 * wanted * classes, inputs))
        logits = teacher(x) - centre
        top = np.sort(logits, axis=1)
        xs.append(x), gaps.append(top[:, -1] - top[:, -2]), labels.append(np.argmax(logits, axis=1))
        counts += np.bincount(labels[-1], minlength=classes)
    x, gap, label = np.concatenate(xs), np.concatenate(gaps), np.concatenate(labels)
    keep = []
    for c in range(classes):  # the first `wanted` drawn of each class, then its `per_class` widest margins
        drawn = np.flatnonzero(label == c)[:wanted]
        keep.append(drawn[np.argsort(-gap[drawn], kind="stable")[:per_class]])
    keep = np.sort(np.concatenate(keep))[:examples]
    x, labels = x[keep], label[keep]
    noisy = rng.random(len(labels)) < label_noise
    labels[noisy] = rng.integers(0, classes, int(noisy.sum()))
    return split_in_memory(x.astype(np.float32), labels.astype(np.int64), classes, validation)


def runner_up(*, length: int = SEQUENCE_LENGTH, vocab: int = SEQUENCE_VOCAB, examples: int = 5_000, seed: int = 0,
              validation: bool = False) -> DataSplit:
    """Sequences of `length` tokens drawn uniformly from `vocab`, labelled by their second most frequent token (only
    sequences whose three most frequent tokens have distinct counts are drawn): a sequence task for a small
    transformer, which SGD learns in tens of epochs. Inputs are int64 token ids of shape (length,); there are
    `vocab` classes."""
    rng = np.random.default_rng([seed, length, vocab])
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < examples:
        tokens = rng.integers(0, vocab, (4 * examples, length))
        top = np.sort(_token_counts(tokens, vocab), axis=1)
        kept.append(tokens[(top[:, -1] > top[:, -2]) & (top[:, -2] > top[:, -3])])
    x = np.concatenate(kept)[:examples]
    y = np.argsort(_token_counts(x, vocab), axis=1, kind="stable")[:, -2]
    return split_in_memory(x.astype(np.int64), y.astype(np.int64), vocab, validation)


def _token_counts(tokens: np.ndarray, vocab: int) -> np.ndarray:
    return np.stack([(tokens == v).sum(1) for v in range(vocab)], axis=1)


def teacher_deep(validation: bool = False) -> DataSplit:
    """The harder teacher task of the suite: 3 tanh layers of 128 units and 5% label noise."""
    return teacher_student(width=128, depth=3, label_noise=0.05, validation=validation)


# The data sets that ship with abray or are generated: name -> loader(validation=False).
IN_MEMORY = {
    "digits": digits,
    "mnist10k": mnist10k,
    "teacher": lambda validation=False: teacher_student(validation=validation),
    "teacher_deep": teacher_deep,
    "runner_up": lambda validation=False: runner_up(validation=validation),
}


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
