import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from abray.training import data
from abray.training.models import build_model


def test_digits_split_is_fixed_and_disjoint():
    a, b = data.digits(), data.digits()
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert len(a.train) == 1437 and len(a.test) == 360 and a.input_shape == (1, 8, 8)
    x = a.train.tensors[0]
    assert 0.0 <= x.min() and x.max() <= 1.0
    train_rows = {r.numpy().tobytes() for r in a.train.tensors[0]}
    overlap = sum(r.numpy().tobytes() in train_rows for r in a.test.tensors[0])
    assert overlap < 5  # the digits set has a few duplicate images, not a leaked split
    val = data.digits(validation=True)
    assert len(val.train) + len(val.test) == len(a.train)
    assert not set(map(bytes, val.test.tensors[0].numpy())) & set(map(bytes, a.test.tensors[0].numpy()))


def test_batch_order_is_a_function_of_seed_and_epoch():
    one = data.batch_indices(100, 16, seed=1, epoch=0)
    assert all(np.array_equal(x, y) for x, y in zip(one, data.batch_indices(100, 16, seed=1, epoch=0)))
    assert not np.array_equal(one[0], data.batch_indices(100, 16, seed=2, epoch=0)[0])
    assert not np.array_equal(one[0], data.batch_indices(100, 16, seed=1, epoch=1)[0])
    assert len(one) == 6 and len(np.unique(np.concatenate(one))) == 96  # drop_last, no repeats


def write_fake_cifar(root, n_per_batch=4):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_batch).tolist()}
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)


def test_cifar10_path_on_tiny_synthetic_files(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    # torchvision checks the real files' md5 sums; synthetic files cannot match them
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    split = data.cifar10(str(tmp_path))
    assert len(split.train) == 20 and len(split.test) == 4 and split.num_classes == 10
    torch.manual_seed(0)
    x, y = data.collate(split.train, [0, 1, 2])
    assert x.shape == (3, 3, 32, 32) and y.shape == (3,)
    torch.manual_seed(0)
    x2, _ = data.collate(split.train, [0, 1, 2])
    assert torch.equal(x, x2)  # augmentation is deterministic given the seed
    out = build_model("resnet20", 10)(x)
    assert out.shape == (3, 10)


def test_cifar10_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(data.DataError, match="download: true"):
        data.cifar10(str(tmp_path / "nowhere"))


def test_imagenet_path_on_tiny_image_folders(tmp_path):
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((40, 50, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    split = data.imagenet(str(tmp_path))
    assert split.num_classes == 2 and len(split.train) == 4
    x, y = data.collate(split.test, [0, 3])
    assert x.shape == (2, 3, 224, 224) and y.tolist() == [0, 1]
    model = build_model("resnet50", split.num_classes).eval()
    with torch.no_grad():
        assert model(x).shape == (2, 2)


def test_imagenet_needs_train_and_val(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(data.DataError, match="val/ is missing"):
        data.imagenet(str(tmp_path))


@pytest.mark.parametrize("name,params", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85)])
def test_cifar_resnets_match_he_et_al(name, params):
    model = build_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params, abs=0.01)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_digits_models_with_and_without_batchnorm():
    plain, bn = build_model("digits_cnn", 10), build_model("digits_cnn_bn", 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 2
    assert plain(torch.randn(4, 1, 8, 8)).shape == bn(torch.randn(4, 1, 8, 8)).shape == (4, 10)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("vgg", 10)
