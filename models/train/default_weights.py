"""Stage 1 of the project's default M2U-Net weights: the CC0 weights, the starting point of the distillation.

Training data: only what the project may use and redistribute (``--dataset cc0``, see
:mod:`models.train.labels`): scikit-image's CC0 retina() at several sizes with Frangi-derived labels, plus
synthetic fundus images; the published checkpoints serve only as a yardstick here. Stage 2,
:mod:`models.train.distill`, starts from these weights and distils the authors' checkpoints into the shipped
``models/weights/m2unet.pth`` (its model card tells the whole recipe)::

    python -m models.train.default_weights --out runs/m2unet-cc0          # train (about 20 min, 1 thread)
    python -m models.train.default_weights --measure models/weights/m2unet.pth \
        --reference ../shared/models/m2unet/M2UNetDRIVE.pth
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

AGREEMENT_SIZES = (544, 768, 1024)
RECIPE = {"epochs": 40, "patch": 256, "patches_per_image": 16, "batch_size": 4, "val_fraction": 0.2, "seed": 0}


def agreement(weights: str | Path, reference: str | Path, sizes: tuple[int, ...] = AGREEMENT_SIZES,
              model: str = "m2unet", bottom_half: bool = False) -> dict[str, float]:
    """Dice inside the estimated FOV between the binary maps (sigmoid > 0.5) of ``weights`` and ``reference``
    on retina() resized to each size; both run as whole images (the size is a multiple of 16).
    ``bottom_half``: count only the lower half of the image (the held-out part of ``--holdout``)."""
    import cv2
    import torch
    from skimage import data

    from edge.fov import estimate_fov
    from edge.metrics import confusion
    from edge.package import Preprocess
    from models import create_model

    ours = create_model(model, weights=weights)
    ref = create_model(model, weights=reference)
    rgb = data.retina()
    out = {}
    for s in sizes:
        img = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA if s < rgb.shape[0] else cv2.INTER_LINEAR)
        fov = estimate_fov(img)
        if bottom_half:
            fov[: s // 2] = False
        x = torch.from_numpy(Preprocess.from_spec(ours.spec).image(img))  # the runtime's scaling of the spec
        with torch.no_grad():
            a = torch.sigmoid(ours(x))[0, 0].numpy() > 0.5
            b = torch.sigmoid(ref(x))[0, 0].numpy() > 0.5
        out[f"retina@{s}"] = confusion(a, b, fov).dice
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.train.default_weights", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/m2unet-cc0", help="run folder for training")
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    ap.add_argument("--resume", help="continue a run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--measure", metavar="WEIGHTS", help="only measure the agreement of these weights")
    ap.add_argument("--holdout", action="store_true",
                    help="generalisation check: train on the top half of retina() only (+ synthetic) and measure "
                         "the agreement on the unseen bottom half")
    ap.add_argument("--reference", default=str(Path(__file__).resolve().parents[3] / "shared" / "models" / "m2unet"
                                               / "M2UNetDRIVE.pth"), help="the yardstick checkpoint")
    return ap


def main(argv: list[str] | None = None) -> int:
    from edge.errors import run_parsed

    return run_parsed(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    if args.measure:
        print(json.dumps({"all": agreement(args.measure, args.reference),
                          "bottom_half": agreement(args.measure, args.reference, bottom_half=True)}, indent=2))
        return 0
    from models.train.trainer import TrainConfig, load_items, train

    cfg = TrainConfig(model="m2unet", dataset="cc0", out=args.out, epochs=args.epochs, patch=RECIPE["patch"],
                      patches_per_image=RECIPE["patches_per_image"], batch_size=RECIPE["batch_size"],
                      val_fraction=RECIPE["val_fraction"], seed=RECIPE["seed"], resume=args.resume,
                      threads=args.threads)
    items = None
    if args.holdout:
        items = [_top_half(it) if it.name.startswith("retina") else it for it in load_items("cc0", None)]
    r = train(cfg, items)
    if Path(args.reference).is_file():
        print(json.dumps({"all": agreement(r.best, args.reference),
                          "bottom_half": agreement(r.best, args.reference, bottom_half=True)}, indent=2))
    return 0


def _top_half(item):
    """The top half rows of a CC0 retina() item (the bottom half is never seen in --holdout training)."""
    from models.train.datasets import Loaded

    h = item.image.shape[0] // 2
    return Loaded(item.name + "-top", item.image[:h].copy(), item.label[:h].copy(), item.fov[:h].copy(),
                  item.fov_source)


if __name__ == "__main__":
    sys.exit(main())
