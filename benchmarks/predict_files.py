"""How often ``dsrnet predict`` is right on CIFAR-10 test images saved as ordinary image files at other sizes.

Issue target: with the shipped weights, ``dsrnet predict`` answers correctly on CIFAR-10 test images saved as
PNG/JPEG at other sizes (upscaled). This writes the first ``--n`` test images (a fixed, class-balanced pick) as
64x64 PNG and 200x150 JPEG (bicubic upscale), runs the library's ``predict`` on each set exactly as the command
does, and prints how many it gets right, beside the model's accuracy on the same images at 32x32.

    python benchmarks/predict_files.py --data-dir DATA [--model dsrnet50_cifar.c10 | RUN | FILE.safetensors]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dsrnet.data import load_split, subset_per_class
from dsrnet.infer import DEFAULT_WEIGHTS, predict

SIZES = {"png_64x64": ((64, 64), "PNG"), "jpeg_200x150": ((200, 150), "JPEG"), "png_32x32": ((32, 32), "PNG")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default=DEFAULT_WEIGHTS, help="weights tag, .safetensors file or run folder")
    ap.add_argument("--n", type=int, default=100, help="images (10 per class for 100)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    test = load_split("cifar10", "test", args.data_dir)
    idx = subset_per_class(test.labels, max(1, args.n // 10), seed=0)[: args.n]
    results = {"model": str(args.model), "n": len(idx)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (size, fmt) in SIZES.items():
            paths = []
            for i in idx:
                p = Path(tmp) / f"{name}_{i}.{fmt.lower()}"
                Image.fromarray(test.images[i]).resize(size, Image.Resampling.BICUBIC).save(p, format=fmt)
                paths.append(p)
            top = predict(args.model, paths, top_k=1, device=args.device)
            right = sum(r[0][0] == test.classes[test.labels[i]] for r, i in zip(top, idx, strict=True))
            results[name] = int(right)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
