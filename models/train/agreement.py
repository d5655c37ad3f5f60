"""How well weights agree with the authors' three published checkpoints on photographs they never saw.

The evaluation set shares nothing with :mod:`models.train.distill`'s training scenes: other synthetic seeds
(``EVAL_SEED_BASE``), one camera format never trained on (1536x2048), three photometric styles applied
after generation, and the **bottom half** of scikit-image's ``retina()`` (training saw only its top half)
at scales not trained on. Images fall in four resolution bands by the FOV diameter of the photograph.

Reference: each teacher run as it was trained, at its own FOV scale (``distill.TEACHERS``), its map brought
back to the photograph's pixels. The weights under test run as ``edge-run`` runs them: resampled by the FOV to
the scale the weights record (``--native-scale`` for the native pass), probability mapped back. Score: Dice of
the two binary maps (probability > 0.5) inside the FOV, at the photograph's resolution::

    python -m models.train.agreement models/weights/m2unet.pth [--native-scale] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.metrics import confusion
from models.train import distill as D

EVAL_SEED_BASE = 1_100_000
STYLES = ("plain", "dim", "cast")
# band: (label, [(kind, format or FOV diameter)])
BANDS = {
    "fov~540 (565x584)": [("syn", (584, 565))] * 3 + [("retina", 540)],
    "fov~900 (999x960)": [("syn", (960, 999))] * 3 + [("retina", 900)],
    "fov~1400-1900 (1411-2048 px)": [("syn", (1536, 2048))] * 2 + [("retina", None)],
    "fov~3300 (3504x2336, clipped)": [("syn", (2336, 3504))] * 3,
}


@dataclass
class EvalImage:
    name: str
    band: str
    image: np.ndarray
    fov: np.ndarray
    score_from: int  # the first row that counts (the bottom half of retina(); 0 for a synthetic image)


def style(img: np.ndarray, name: str) -> np.ndarray:
    """A fixed photometric style: 'dim' (darker, gamma 1.4), 'cast' (blue-green cast, soft focus, JPEG 60)."""
    import cv2

    if name == "plain":
        return img
    fov = img.max(axis=2) > 0
    x = img.astype(np.float32) / 255
    if name == "dim":
        x = (x * 0.75) ** 1.4
    else:
        x = cv2.GaussianBlur(x * np.array([0.9, 1.08, 1.2], np.float32), (0, 0), 0.8)
    out = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    out[~fov] = 0
    if name == "cast":
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


def eval_images(bands: dict = BANDS, per_band: int | None = None) -> list[EvalImage]:
    """The evaluation photographs, band by band; ``per_band``: only the first n of each band (the same
    images, seeds and styles as in the full set)."""
    from skimage import data

    from edge.fov import estimate_fov

    out = []
    k = 0
    for band, items in bands.items():
        for i, (kind, arg) in enumerate(items):
            if kind == "syn":
                seed, st = EVAL_SEED_BASE + k, STYLES[k % len(STYLES)]
                k += 1
            if per_band is not None and i >= per_band:
                continue
            if kind == "syn":
                img, fov = D.synthetic_scene(*arg, seed)
                out.append(EvalImage(f"syn{seed}-{st}@{arg[1]}x{arg[0]}", band, style(img, st), fov, 0))
            else:
                rgb = data.retina()
                if arg is not None:
                    size = D.scaled_size(rgb.shape, D.fov_diameter(estimate_fov(rgb)), arg)
                    rgb = D.resize_to(rgb, size)
                fov = estimate_fov(rgb)
                out.append(EvalImage(f"retina-bottom@{rgb.shape[1]}", band, rgb, fov,
                                     rgb.shape[0] // 2))
    return out


_REFERENCE: dict[tuple[str, str], np.ndarray] = {}  # (image, teacher) -> binary map: one process computes it once


def agreement(weights: str | Path, fov_diameter: float | None, images: list[EvalImage] | None = None,
              teacher_dir: Path = D.TEACHER_DIR) -> dict:
    """Per image and per band: Dice vs each teacher. Returns {"images": [...], "bands": {band: {teacher:
    mean}}, "min": smallest band mean}."""
    from models import create_model

    teachers = D.load_teachers(teacher_dir)
    net = create_model("m2unet", weights=weights)
    rows = []
    for ev in images if images is not None else eval_images():
        m = ev.fov.copy()
        m[: ev.score_from] = False
        ours = D.runtime_prob(net, ev.image, fov_diameter) > 0.5
        row = {"image": ev.name, "band": ev.band}
        for k, t in teachers.items():
            if (ev.name, k) not in _REFERENCE:
                _REFERENCE[ev.name, k] = D.teacher_prob(t, ev.image, ev.fov, D.TEACHERS[k][1]) > 0.5
            ref = _REFERENCE[ev.name, k]
            row[k] = round(confusion(ours, ref, m).dice, 4)
        rows.append(row)
        print(f"{ev.name}: " + " ".join(f"{k} {row[k]:.3f}" for k in teachers), file=sys.stderr, flush=True)
    bands = {}
    for b in dict.fromkeys(r["band"] for r in rows):
        sel = [r for r in rows if r["band"] == b]
        bands[b] = {k: round(float(np.mean([r[k] for r in sel])), 4) for k in teachers}
    return {"weights": str(weights), "fov_diameter_px": fov_diameter, "images": rows, "bands": bands,
            "min": min(min(v.values()) for v in bands.values())}


def markdown(result: dict) -> str:
    names = list(D.TEACHERS)
    lines = ["| band | " + " | ".join(f"vs {n}" for n in names) + " |", "|---|" + "---|" * len(names)]
    for b, v in result["bands"].items():
        lines.append(f"| {b} | " + " | ".join(f"{v[n]:.3f}" for n in names) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.train.agreement", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="M2U-Net state dict (.pth)")
    ap.add_argument("--fov-diameter", type=float, default=None,
                    help="the weights' training scale (default: their sidecar's scale.fov_diameter_px)")
    ap.add_argument("--native-scale", action="store_true", help="run the weights at each image's own scale")
    ap.add_argument("--teachers", default=str(D.TEACHER_DIR))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the result as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    from edge.errors import run_parsed

    return run_parsed(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    import torch

    from models.weights import sidecar_scale

    torch.set_num_threads(args.threads)
    d = None if args.native_scale else (args.fov_diameter or sidecar_scale(args.weights))
    r = agreement(args.weights, d, teacher_dir=Path(args.teachers))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    print(markdown(r))
    print(f"smallest band mean: {r['min']:.3f} (weights at {'native scale' if d is None else f'FOV {d:g} px'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
