"""Distil the authors' three published M2U-Net checkpoints into the project's default weights, at one scale.

The teachers (``../shared/models/m2unet``, MIT) were each trained on one camera at one resolution: DRIVE
(field of view about 540 px across), CHASE_DB1 (about 940 px) and HRF (about 3300 px). Each is run here
**at its own training scale**: the photograph is resampled by its field of view (FOV) to that teacher's
diameter, segmented whole, and its probability mapped back. The student learns a weighted mean of the three
maps at one scale, :data:`STUDENT_FOV` px, which the package records (``preprocess.fov_diameter_px``) and
the runtime resamples every photograph to before tiling (``edge.scale``; ``edge-run --native-scale`` turns it
off).

Training scenes (nothing an evaluation uses, see :mod:`models.train.agreement`):

* procedural synthetic photographs (:mod:`models.train.synthetic`) of seven camera formats from 565x584 to
  3504x2336 (the two widest generated square and cropped top and bottom, so their FOV is clipped as HRF's),
  seeds ``TRAIN_SEEDS``;
* the top half of scikit-image's CC0 ``retina()`` at three scales (its bottom half and other scales are
  held out for the evaluation).

Each scene is resampled to the student's scale with its three teacher maps and cached
(``scenes/NAME.npz``); training draws random 256 px patches with heavy augmentation (scale 0.5-3x, rotation,
flips, colour, gamma, illumination, blur, noise, JPEG) and fits the soft target with BCE + 0.3 (1 - soft
Jaccard) inside the FOV. It starts from the project's earlier CC0 weights (its own, not the teachers')::

    python -m models.train.default_weights --out runs/m2unet-cc0    # stage 1: CC0 weights (about 14 min)
    python -m models.train.distill --out runs/distill               # stage 2: scenes, training (about 45 min)
    python -m models.train.distill --ship runs/distill              # measure, write models/weights/m2unet.*
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.imageio import write_atomic
from edge.metrics import confusion
from edge.scale import fov_diameter, plan_scale, resize_image, resize_mask, resize_prob, scaled_size

STUDENT_FOV = 960  # px: the FOV diameter the default weights are trained at
TEACHERS = {  # name: (file, approximate FOV diameter of the training images in px)
    "drive": ("M2UNetDRIVE.pth", 540),
    "chase": ("M2UNetCHASEDB1.pth", 940),
    "hrf": ("M2UNetHRF.pth", 3300),
}
TEACHER_DIR = Path(__file__).resolve().parents[3] / "shared" / "models" / "m2unet"
FORMATS = ((584, 565), (605, 700), (960, 999), (1024, 1024), (1536, 1536), (1944, 2592), (2336, 3504))
CLIPPED = {(1944, 2592), (2336, 3504)}  # generated square, cropped to this height: an FOV clipped as HRF's
TRAIN_SEEDS = range(2000, 2028)  # 4 per format
VAL_SEEDS = range(2900, 2907)  # 1 per format (model selection only)
RETINA_TRAIN_FOV = (640, 800, 1100)  # top half only
RECIPE = {"steps": 1500, "batch_size": 8, "patch": 256, "lr": 1e-3, "lr_final": 1e-5, "weight_decay": 0.01,
          "jaccard_weight": 0.3, "val_every": 250, "seed": 0}


@dataclass
class Scene:
    """One training photograph at the student's scale: RGB uint8, the teachers' maps (uint8 = p * 255), FOV."""

    name: str
    image: np.ndarray
    teachers: dict[str, np.ndarray]
    fov: np.ndarray


def synthetic_scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic photograph of format (h, w) and its FOV; clipped formats are cut from a square one."""
    from models.train.synthetic import synthetic_fundus

    if (h, w) in CLIPPED:
        f = synthetic_fundus(w, w, seed)
        top = (w - h) // 2
        return f.image[top:top + h].copy(), f.fov[top:top + h].copy()
    f = synthetic_fundus(h, w, seed)
    return f.image, f.fov


def resize_to(image: np.ndarray, size: tuple[int, int], mask: bool = False) -> np.ndarray:
    """The runtime's resampling (edge.scale): a photo (uint8), a probability map (float) or a mask (bool)."""
    if mask or image.dtype == bool:
        return resize_mask(image, size)
    if image.dtype == np.uint8:
        return resize_image(image, size)
    return resize_prob(image.astype(np.float32, copy=False), size)


def whole_prob(net, image: np.ndarray) -> np.ndarray:
    """Sigmoid of one pass over the whole image (predict_prob with a tile that covers it), float32 (H, W)."""
    from models.train.predict import predict_prob

    return predict_prob(net, image, tile=(1 << 16, 1 << 16))


def teacher_prob(net, image: np.ndarray, fov: np.ndarray, diameter: float) -> np.ndarray:
    """A teacher's probability at the image's resolution, computed at the teacher's own scale."""
    size = scaled_size(image.shape, fov_diameter(fov), diameter)
    p = whole_prob(net, resize_to(image, size))
    return resize_to(p, image.shape[:2])


def load_teachers(folder: Path = TEACHER_DIR) -> dict:
    from edge.errors import EdgeError
    from models import create_model

    missing = [f for f, _ in TEACHERS.values() if not (folder / f).is_file()]
    if missing:
        raise EdgeError(f"teacher checkpoints {', '.join(missing)} not found in {folder}; pass --teachers DIR "
                        "with the authors' published M2U-Net checkpoints")
    return {k: create_model("m2unet", weights=folder / f) for k, (f, _) in TEACHERS.items()}


def make_scene(name: str, image: np.ndarray, fov: np.ndarray, teachers: dict) -> Scene:
    maps = {k: teacher_prob(net, image, fov, TEACHERS[k][1]) for k, net in teachers.items()}
    size = scaled_size(image.shape, fov_diameter(fov), STUDENT_FOV)
    return Scene(name, resize_to(image, size),
                 {k: np.round(resize_to(p, size) * 255).astype(np.uint8) for k, p in maps.items()},
                 resize_to(fov, size, mask=True))


def scene_specs(split: str) -> list[tuple[str, callable]]:
    """(name, maker) of the training or validation scenes; maker() -> (image, fov)."""
    from skimage import data

    from edge.fov import estimate_fov

    seeds = TRAIN_SEEDS if split == "train" else VAL_SEEDS
    out = [(f"syn{s}@{FORMATS[i % len(FORMATS)][1]}x{FORMATS[i % len(FORMATS)][0]}",
            (lambda hw=FORMATS[i % len(FORMATS)], s=s: synthetic_scene(*hw, s))) for i, s in enumerate(seeds)]
    if split == "train":
        def retina(d: int):
            rgb = data.retina()
            fov = estimate_fov(rgb)
            size = scaled_size(rgb.shape, fov_diameter(fov), d)
            img = resize_to(rgb, size)
            f = estimate_fov(img)
            half = size[0] // 2
            return img[:half].copy(), f[:half].copy()

        out += [(f"retina-top@fov{d}", (lambda d=d: retina(d))) for d in RETINA_TRAIN_FOV]
    return out


def build_scenes(cache: Path, split: str, teacher_dir: Path = TEACHER_DIR) -> list[Scene]:
    cache.mkdir(parents=True, exist_ok=True)
    teachers = None
    scenes = []
    for name, maker in scene_specs(split):
        p = cache / f"{name}.npz"
        if not p.is_file():
            teachers = teachers or load_teachers(teacher_dir)
            t = time.perf_counter()
            image, fov = maker()
            sc = make_scene(name, image, fov, teachers)
            buf = io.BytesIO()
            np.savez_compressed(buf, image=sc.image, fov=sc.fov, **{f"t_{k}": v for k, v in sc.teachers.items()})
            write_atomic(p, buf.getvalue())
            print(f"scene {name}: {image.shape[1]}x{image.shape[0]} -> {sc.image.shape[1]}x{sc.image.shape[0]} "
                  f"({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
        z = np.load(p)
        scenes.append(Scene(name, z["image"], {k: z[f"t_{k}"] for k in TEACHERS}, z["fov"]))
    return scenes


def choose_weights(scenes: list[Scene], step: float = 0.1) -> tuple[dict[str, float], float]:
    """Teacher weights of the target (summing to 1) that maximise the smallest mean agreement (Dice at 0.5)
    of the weighted map with each teacher over the training scenes."""
    best = (None, -1.0)
    names = list(TEACHERS)
    grid = np.arange(0.0, 1.0 + 1e-9, step)
    for a in grid:
        for b in grid:
            if a + b > 1 + 1e-9:
                continue
            w = dict(zip(names, (a, b, 1 - a - b)))
            worst = 1.0
            for k in names:
                d = [confusion(sum(w[j] * sc.teachers[j].astype(np.float32) for j in names) > 127.5,
                          sc.teachers[k] > 127, sc.fov).dice for sc in scenes]
                worst = min(worst, float(np.mean(d)))
            if worst > best[1]:
                best = ({k: round(float(v), 3) for k, v in w.items()}, worst)
    return best


# ---------------------------------------------------------------- augmentation

def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = img.astype(np.float32) / 255.0
    fov = img.max(axis=2) > 0
    x *= rng.uniform(0.8, 1.2, 3).astype(np.float32)  # colour cast (camera white balance)
    x *= np.float32(rng.uniform(0.6, 1.4))  # brightness
    mean = x[fov].mean() if fov.any() else 0.5
    x = (x - mean) * np.float32(rng.uniform(0.6, 1.4)) + mean  # contrast
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * np.float32(rng.uniform(0.6, 1.4))  # saturation
    np.clip(x, 0, 1, out=x)
    x **= np.float32(math.exp(rng.uniform(-0.5, 0.5)))  # gamma 0.6-1.65
    if rng.random() < 0.5:  # uneven illumination: a smooth multiplicative field
        h, w = x.shape[:2]
        g = rng.uniform(0.6, 1.3, (3, 3)).astype(np.float32)
        x *= cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.5))
    if rng.random() < 0.5:
        x += rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    x = np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)
    x[~fov] = 0
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", x[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
        x = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(x)


def sample_patch(sc: Scene, target: np.ndarray, size: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random (size x size) patch of a scene: scaled (0.75-1.33 mostly, 0.5-3 in 30 %), rotated, flipped,
    with its soft target (bilinear) and FOV (nearest), then photometric augmentation of the photo."""
    h, w = sc.image.shape[:2]
    s = math.exp(rng.uniform(math.log(0.5), math.log(3.0))) if rng.random() < 0.3 else \
        math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
    ys, xs = np.nonzero(sc.fov[::8, ::8])
    k = int(rng.integers(len(ys)))
    cy, cx = ys[k] * 8 + rng.uniform(0, 8), xs[k] * 8 + rng.uniform(0, 8)
    a = rng.uniform(-math.pi, math.pi)
    fx = -1.0 if rng.random() < 0.5 else 1.0
    c, si = math.cos(a) / s, math.sin(a) / s
    # output (u, v) about the patch centre -> input (x, y)
    m = np.array([[c * fx, -si, 0.0], [si * fx, c, 0.0]], np.float64)
    half = (size - 1) / 2
    m[:, 2] = [cx - (m[0, 0] * half + m[0, 1] * half), cy - (m[1, 0] * half + m[1, 1] * half)]
    flags = cv2.WARP_INVERSE_MAP
    img = cv2.warpAffine(sc.image, m, (size, size), flags=cv2.INTER_LINEAR | flags, borderValue=0)
    tgt = cv2.warpAffine(target, m, (size, size), flags=cv2.INTER_LINEAR | flags, borderValue=0)
    fov = cv2.warpAffine(sc.fov.astype(np.uint8), m, (size, size), flags=cv2.INTER_NEAREST | flags) > 0
    img[~fov] = 0
    return _photometric(img, rng), tgt, fov


# ---------------------------------------------------------------- training

def runtime_prob(net, image: np.ndarray, fov_diameter_px: float | None) -> np.ndarray:
    """Weights as edge-run runs them: the FOV estimated from the photo, the scale decided by
    :func:`edge.scale.plan_scale` for weights trained at ``fov_diameter_px`` (None: native), one whole pass
    (the runtime's overlapping tiles agree with it to Dice 0.9997), the map brought back to the photo."""
    from edge.fov import estimate_fov

    plan = plan_scale(image.shape, estimate_fov(image), fov_diameter_px, native_scale=fov_diameter_px is None)
    if not plan.resampled:
        return whole_prob(net, image)
    return resize_prob(whole_prob(net, resize_image(image, plan.processed)), plan.size)


def train(out: Path, init: Path | None, threads: int, teacher_dir: Path = TEACHER_DIR,
          steps: int | None = None) -> dict:
    import torch

    from models import create_model

    torch.set_num_threads(threads)
    recipe = dict(RECIPE, steps=steps or RECIPE["steps"])
    scenes = build_scenes(out / "scenes", "train", teacher_dir)
    val = build_scenes(out / "scenes", "val", teacher_dir)
    weights, worst = choose_weights(scenes)
    print(f"target weights {weights} (smallest mean agreement of the weighted map with a teacher: {worst:.3f})",
          file=sys.stderr, flush=True)
    targets = [sum(weights[k] * sc.teachers[k].astype(np.float32) for k in TEACHERS) / 255.0 for sc in scenes]
    rng = np.random.default_rng(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    net = create_model("m2unet", weights=init)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe["steps"], eta_min=recipe["lr_final"])
    areas = np.array([sc.fov.sum() for sc in scenes], np.float64)
    pick = areas / areas.sum()
    history, best = [], (-1.0, None)
    t0 = time.perf_counter()
    for step in range(1, recipe["steps"] + 1):
        net.train()
        batch = [sample_patch(scenes[i], targets[i], recipe["patch"], rng)
                 for i in rng.choice(len(scenes), recipe["batch_size"], p=pick)]
        x = torch.from_numpy(np.stack([b[0] for b in batch]).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        y = torch.from_numpy(np.stack([b[1] for b in batch])[:, None])
        m = torch.from_numpy(np.stack([b[2] for b in batch])[:, None].astype(np.float32))
        logits = net(x)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=m, reduction="sum") / m.sum()
        p = torch.sigmoid(logits) * m
        inter = (p * y).sum()
        jac = inter / (p.sum() + (y * m).sum() - inter + 1e-7)
        loss = bce + recipe["jaccard_weight"] * (1 - jac)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % recipe["val_every"] == 0 or step == recipe["steps"]:
            net.eval()
            agree = {k: float(np.mean([confusion(whole_prob(net, sc.image) > 0.5, sc.teachers[k] > 127, sc.fov).dice
                                       for sc in val])) for k in TEACHERS}
            score = min(agree.values())
            history.append({"step": step, "loss": round(float(loss), 4), "val": agree,
                            "seconds": round(time.perf_counter() - t0, 1)})
            print(f"step {step}: loss {float(loss):.4f} val agreement "
                  + " ".join(f"{k} {v:.3f}" for k, v in agree.items()) + f" ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            if score > best[0]:
                best = (score, step)
                torch.save(net.state_dict(), out / "best.pth")
    return {"recipe": recipe, "target_weights": weights, "target_worst_agreement": round(worst, 4),
            "best_step": best[1], "best_val_min_agreement": round(best[0], 4), "history": history,
            "train_scenes": [sc.name for sc in scenes], "val_scenes": [sc.name for sc in val],
            "init": None if init is None else str(init)}


def ship(run: Path, teacher_dir: Path = TEACHER_DIR, full: dict | None = None) -> Path:
    """Measure ``run/best.pth`` (:mod:`models.train.agreement`; ``full``: that result, already measured) and
    write it with its sidecar as the shipped default weights, all files or none. The sidecar's
    ``agreement_guard`` is the first image of each band, the subset tests/train/test_default_weights.py
    measures again."""
    import hashlib

    from edge.errors import EdgeError
    from edge.imageio import write_files_atomic
    from edge.package import versions
    from models import get_spec
    from models.train import agreement as A
    from models.train.trainer import CHECKPOINT_FORMAT
    from models.weights import SHIPPED

    best = run / "best.pth"
    if not best.is_file() or not (run / "run.json").is_file():
        raise EdgeError(f"{run} holds no finished distillation run (best.pth, run.json); run "
                        "python -m models.train.distill --out RUN first")
    r = json.loads((run / "run.json").read_text())
    full = full or A.agreement(best, STUDENT_FOV, teacher_dir=teacher_dir)
    first = {}
    for row in full["images"]:
        first.setdefault(row["band"], row)
    guard = {b: {k: row[k] for k in TEACHERS} for b, row in first.items()}
    data = best.read_bytes()
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    side = {
        "format": CHECKPOINT_FORMAT, "format_version": 1, "model": "m2unet", "spec": get_spec("m2unet").to_meta(),
        "weights": {"file": "m2unet.pth", "sha256": sha(data)},
        "scale": {"fov_diameter_px": STUDENT_FOV,
                  "how": "trained on photographs resampled so that their field of view is this many pixels "
                         "across; edge-run resamples every photograph to it (--native-scale: off)"},
        "made_by": "python -m models.train.distill (distillation of the authors' checkpoints)",
        "teachers": {k: {"file": f, "sha256": sha((teacher_dir / f).read_bytes()), "fov_diameter_px": d,
                         "licence": "MIT (Laibacher et al.)"} for k, (f, d) in TEACHERS.items()},
        "init": r["init"] and {"file": Path(r["init"]).name, "sha256": sha(Path(r["init"]).read_bytes())}
        if r["init"] and Path(r["init"]).is_file() else r["init"],
        "data": {"train": r["train_scenes"], "val": r["val_scenes"]},
        "recipe": r["recipe"], "target_weights": r["target_weights"], "best_step": r["best_step"],
        "best_val_min_agreement": r["best_val_min_agreement"],
        "agreement": {"bands": full["bands"], "images": full["images"], "min": full["min"]},
        "agreement_guard": {"bands": guard, "images": [row["image"] for row in first.values()]},
        "versions": versions(("torch", "numpy")),
    }
    write_files_atomic({SHIPPED / "m2unet.pth": data,
                        SHIPPED / "m2unet.json": (json.dumps(side, indent=2) + "\n").encode()})
    print(A.markdown(full))
    return SHIPPED / "m2unet.pth"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m models.train.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/distill", help="run folder (scene cache, best.pth, run.json)")
    ap.add_argument("--teachers", default=str(TEACHER_DIR), help="folder of the authors' checkpoints")
    ap.add_argument("--init", default="runs/m2unet-cc0/best.pth",
                    help="initial weights: the stage-1 CC0 weights of python -m models.train.default_weights "
                         "(default: its default output, runs/m2unet-cc0/best.pth)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ship", metavar="RUN", default=None,
                    help="only write RUN's best.pth, with its sidecar and measured agreement, as the shipped "
                         "default weights (models/weights/m2unet.pth + m2unet.json)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from edge.errors import run_parsed

    return run_parsed(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from edge.errors import EdgeError

    if args.ship:
        ship(Path(args.ship), Path(args.teachers))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    init = Path(args.init)
    if not init.is_file():
        raise EdgeError(f"initial weights {init} not found; make them with python -m models.train.default_weights "
                        "--out runs/m2unet-cc0 (stage 1) or pass --init")
    r = train(out, init, args.threads, Path(args.teachers), args.steps)
    (out / "run.json").write_text(json.dumps(r, indent=1))
    print(json.dumps({k: r[k] for k in ("target_weights", "best_step", "best_val_min_agreement")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
