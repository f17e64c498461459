import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from abray.training import data
from abray.training.build import load_data
from abray.training.config import DATASET_MODELS, ConfigError, parse_config
from abray.training.models import build_model
from abray.training.tasks import REPORT, SELECTION, SUITE

NORMALIZATION_LAYERS = {"batchnorm": torch.nn.modules.batchnorm._BatchNorm, "layernorm": torch.nn.LayerNorm}


def test_the_suite_splits_tasks_into_selection_and_report_with_both_kinds_of_model():
    assert set(SELECTION) | set(REPORT) == set(SUITE) and not set(SELECTION) & set(REPORT)
    for tasks in (SELECTION, REPORT):
        assert {t.normalized for t in tasks} == {True, False}
    image = [t for t in SUITE if t.dataset in ("digits", "mnist10k")]
    for dataset in ("digits", "mnist10k"):  # every image task has a model with and one without normalization
        assert {t.normalization for t in image if t.dataset == dataset} == {"none", "batchnorm"}
    assert any(t.model == "seq_transformer" for t in SUITE)


@pytest.mark.parametrize("task", SUITE, ids=lambda t: t.name)
def test_every_task_is_a_valid_config_whose_model_has_the_normalization_it_claims(task):
    config = parse_config(task.config(epochs=1))
    assert config.model in DATASET_MODELS[config.dataset]
    split = load_data(config)
    model = build_model(config.model, split.num_classes)
    layers = [m for m in model.modules() if isinstance(m, tuple(NORMALIZATION_LAYERS.values()))]
    if task.normalization == "none":
        assert not layers
    else:
        assert layers and all(isinstance(m, NORMALIZATION_LAYERS[task.normalization]) for m in layers)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()) \
        or task.normalization == "batchnorm"
    x, y = data.collate(split.train, range(4))
    assert model(x).shape == (4, split.num_classes) and y.dtype == torch.int64


@pytest.mark.parametrize("name", sorted(data.IN_MEMORY))
def test_in_memory_data_sets_are_fixed_with_a_validation_split_inside_training(name):
    a, b = data.IN_MEMORY[name](), data.IN_MEMORY[name]()
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    val = data.IN_MEMORY[name](validation=True)
    assert len(val.train) + len(val.test) == len(a.train)
    test_rows = {r.numpy().tobytes() for r in a.test.tensors[0]}
    assert not any(r.numpy().tobytes() in test_rows for r in val.test.tensors[0][:200])
    counts = np.bincount(a.train.tensors[1].numpy(), minlength=a.num_classes)
    assert counts.min() > 0.3 * counts.mean()  # no class is missing or rare


def test_mnist10k_is_the_shipped_file_split_80_20_by_class():
    assert hashlib.sha256(data.MNIST10K_FILE.read_bytes()).hexdigest() == \
        "a9c444adb7dac046fe419c1988c0811da067438961b66d8322526e6e844cae2d"
    assert (data.MNIST10K_FILE.parent / "MNIST_LICENSE.md").read_text().count("CC BY-SA 3.0") >= 2
    split = data.mnist10k()
    assert len(split.train) == 8000 and len(split.test) == 2000 and split.input_shape == (1, 28, 28)
    with np.load(data.MNIST10K_FILE) as f:
        all_counts = np.bincount(f["labels"])
    test_counts = np.bincount(split.test.tensors[1].numpy())
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)  # stratified
    x = split.train.tensors[0]
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1  # MNIST's mean and std


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (MNIST's format): magic (0, 0, type 0x08 = ubyte, ndim), big-endian sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_full_mnist_from_torchvisions_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_y, test_y = np.arange(50) % 10, np.arange(20) % 10
    train_x = rng.integers(0, 256, (50, 28, 28))
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", train_y)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    config = parse_config({"dataset": "mnist", "model": "mnist_cnn", "data_root": str(tmp_path)})
    split = load_data(config)
    assert len(split.train) == 50 and len(split.test) == 20
    assert split.train.tensors[1].tolist() == train_y.tolist()
    expected = (train_x[3] / 255.0 - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(split.train.tensors[0][3, 0].numpy(), expected, rtol=1e-5)
    val = load_data(config, validation=True)
    assert len(val.train) == 40 and len(val.test) == 10
    assert build_model("mnist_cnn_bn", 10)(split.test.tensors[0][:3]).shape == (3, 10)


def test_full_mnist_missing_files_say_where_they_go(tmp_path):
    with pytest.raises(data.DataError, match="MNIST/raw"):
        data.mnist(str(tmp_path))
    with pytest.raises(ConfigError, match="data_root is required for dataset 'mnist'"):
        parse_config({"dataset": "mnist", "model": "mnist_cnn"})


def test_teacher_difficulty_is_dialled_by_depth_width_and_noise():
    easy = data.teacher_student(width=32, depth=1, examples=2000)
    again = data.teacher_student(width=32, depth=1, examples=2000)
    assert torch.equal(easy.train.tensors[0], again.train.tensors[0])
    assert easy.input_shape == (data.TEACHER_INPUTS,) and easy.num_classes == 10

    def linear_probe_accuracy(split):  # least squares on one-hot labels: how linear the task is
        x, y = split.train.tensors[0].double(), split.train.tensors[1]
        x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        w = torch.linalg.lstsq(x1, torch.nn.functional.one_hot(y).double()).solution
        return float(((x1 @ w).argmax(1) == y).double().mean())

    deep = data.teacher_student(width=128, depth=3, gain=2.5, examples=2000)
    assert linear_probe_accuracy(deep) < linear_probe_accuracy(easy) - 0.1
    wide_margin = data.teacher_student(width=32, depth=1, examples=2000, margin=0.8)
    assert linear_probe_accuracy(wide_margin) > linear_probe_accuracy(easy) + 0.03
    assert np.bincount(easy.train.tensors[1].numpy()).tolist() == [160] * 10  # 200 a class, 80% in training
    noisy = data.teacher_student(width=32, depth=1, examples=2000, label_noise=0.5)
    clean = {x.numpy().tobytes(): int(y) for x, y in zip(*easy.train.tensors)}
    clean.update({x.numpy().tobytes(): int(y) for x, y in zip(*easy.test.tensors)})
    changed = np.mean([clean[x.numpy().tobytes()] != int(y) for x, y in zip(*noisy.train.tensors)])
    assert 0.38 < changed < 0.52  # the same inputs, half relabelled (a tenth of those to their own class)
    with pytest.raises(ValueError, match="label_noise must be in"):
        data.teacher_student(label_noise=1.5)
    with pytest.raises(ValueError, match="margin must be in"):
        data.teacher_student(margin=0.95)


def test_runner_up_labels_are_the_second_most_frequent_token():
    split = data.runner_up(examples=300)
    for tokens, label in zip(split.train.tensors[0][:50], split.train.tensors[1][:50]):
        counts = sorted(((int((tokens == v).sum()), v) for v in range(data.SEQUENCE_VOCAB)), reverse=True)
        assert counts[0][0] > counts[1][0] > counts[2][0]
        assert int(label) == counts[1][1]
    assert split.train.tensors[0].shape[1:] == (data.SEQUENCE_LENGTH,)


def test_shipped_data_is_package_data():
    import tomllib

    package_data = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert any(p.endswith(".npz") for p in package_data["abray"]) and any(p.endswith(".md")
                                                                          for p in package_data["abray"])
