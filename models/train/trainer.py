"""`edge-train`: train a zoo model with its paper's recipe; best checkpoint by validation Dice, resumable.

Outputs in ``--out`` (default ``runs/<model>-<dataset>``), each written atomically:

* ``best.pth`` / ``best.json``: the state dict with the highest validation Dice (at 0.5) and its sidecar
  (model, spec, data, recipe, epochs, metrics; the threshold that maximises validation Dice). Load it with
  ``edge-export MODEL --weights best.pth`` or ``edge-eval best.pth``.
* ``last.pth`` / ``last.json``: the state dict after the last completed epoch.
* ``resume.pt``: everything needed to continue (optimizer, RNG states, history): ``--resume OUT``.
* ``loss.csv``: one row per epoch (mean training loss, validation Dice, learning rate, seconds).

A non-finite loss stops training with an error naming the last good checkpoint; nothing is overwritten
with the diverged state.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import io
import json
import math
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.errors import EdgeError, parse_size, run_cli
from edge.imageio import output_folder, write_atomic
from edge.metrics import Confusion, confusion
from edge.package import versions
from edge.package import Preprocess
from models.train import augment as aug
from models.train.datasets import DATASETS, Loaded, load_sample, load_split
from models.train.losses import LOSSES
from models.train.metrics import Histogram
from models.train.predict import predict_prob
from models.train.recipes import Recipe, recipe_for

CHECKPOINT_FORMAT = "vessel-edge-checkpoint"
DATASET_CHOICES = (*DATASETS, "cc0")
# The redistributable CC0 set (models.train.labels): retina() at these sizes plus synthetic images.
CC0_RETINA_SIZES = (512, 576, 640, 704, 768, 896, 1024, 1152)
CC0_SYNTHETIC = ((584, 565), (768, 768), (960, 999), (640, 640))


class TrainingDiverged(EdgeError):
    """The loss became NaN or infinite."""

    exit_code = 5


@dataclass
class TrainConfig:
    model: str
    dataset: str
    data: str | None = None
    out: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    patch: int | None = None  # None: the recipe's; 0: whole images
    lr: float | None = None
    weight_decay: float | None = None
    patches_per_image: int | None = None
    val_fraction: float = 0.2
    seed: int = 0
    resume: str | None = None
    synthetic_count: int = 20
    synthetic_size: tuple[int, int] = (584, 565)
    threads: int | None = None
    augment: bool = True
    force: bool = False


@dataclass
class TrainResult:
    out: Path
    best: Path
    last: Path
    epochs: int
    best_epoch: int
    best_dice: float
    threshold: float
    stopped: str
    history: list[dict] = field(default_factory=list)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- checkpoints

def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def read_sidecar(weights: str | Path) -> dict | None:
    """The JSON beside a checkpoint (``best.pth`` -> ``best.json``), or None when there is none."""
    p = sidecar_path(weights)
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EdgeError(f"{p} is not readable JSON ({exc}); delete it or restore it from the training run") from exc
    return meta if isinstance(meta, dict) and meta.get("format") == CHECKPOINT_FORMAT else None


def check_checkpoint_model(weights: str | Path, model: str) -> dict | None:
    """Refuse a checkpoint whose sidecar says it was trained for another model; return the sidecar."""
    meta = read_sidecar(weights)
    if meta is not None and meta.get("model") != model:
        raise EdgeError(f"checkpoint {Path(weights).name} was trained for '{meta.get('model')}' (says "
                        f"{sidecar_path(weights).name}), not '{model}'; pass a checkpoint of '{model}' or "
                        f"use model '{meta.get('model')}'")
    return meta


def _save_state_dict(state: dict, path: Path) -> str:
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


# ----------------------------------------------------------------------------------------------------- data

def load_items(dataset: str, root: str | None, cfg: TrainConfig | None = None, split: str = "train") -> list[Loaded]:
    """Decode every sample of a split (images, labels and FOVs in memory); each must have a label."""
    if dataset == "cc0":
        from models.train.labels import retina_cc0
        from models.train.synthetic import synthetic_fundus

        if split != "train":
            raise EdgeError("the cc0 set has no test split (its one real photo is in the training set)")
        items = [retina_cc0(s) for s in CC0_RETINA_SIZES]
        for i, (h, w) in enumerate(CC0_SYNTHETIC * 2):
            f = synthetic_fundus(h, w, seed=i)
            items.append(Loaded(f"synthetic_{i:07d}", f.image, f.vessels, f.fov, "synthetic"))
        return items
    kw = {}
    if dataset == "synthetic" and cfg is not None:
        kw = {"count": cfg.synthetic_count, "size": tuple(cfg.synthetic_size)}
    samples = load_split(dataset, root, split, **kw)
    items = [load_sample(s) for s in samples]
    unlabelled = [it.name for it in items if it.label is None]
    if unlabelled:
        raise EdgeError(f"{dataset} {split}: {len(unlabelled)} image(s) have no label (e.g. {unlabelled[0]}); "
                        "training needs a ground truth for every image")
    estimated = sum(it.fov_source == "estimated" for it in items)
    if estimated:
        _log(f"note: {dataset} ships no FOV masks for {estimated} image(s); estimated from the dark border")
    return items


def split_validation(items: list[Loaded], fraction: float, seed: int) -> tuple[list[Loaded], list[Loaded]]:
    """A seeded random validation subset; fraction 0: validate on the training images (announced)."""
    if not 0 <= fraction < 1:
        raise EdgeError(f"--val-fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        _log("note: --val-fraction 0: the best checkpoint is chosen on the training images themselves")
        return items, items
    n_val = max(1, int(round(fraction * len(items))))
    if n_val >= len(items):
        raise EdgeError(f"--val-fraction {fraction} leaves no training image out of {len(items)}; pass a smaller "
                        "fraction, or 0 to select on the training images")
    order = np.random.default_rng(seed).permutation(len(items))
    val = sorted(order[:n_val].tolist())
    return [items[i] for i in range(len(items)) if i not in val], [items[i] for i in val]


class Sampler:
    """Augmented training batches: whole images (cropped to the divisor) or random patches in the FOV."""

    def __init__(self, items: list[Loaded], recipe: Recipe, divisor: int, spec, augment: bool) -> None:
        self.items = items
        self.recipe = recipe
        self.divisor = divisor
        self.spec = spec
        self.cfg = aug.PAPER if augment else aug.NONE
        if recipe.patch is not None and recipe.patch % divisor:
            raise EdgeError(f"--patch {recipe.patch} is not a multiple of the model's divisor {divisor}; pass "
                            f"{max(divisor, recipe.patch // divisor * divisor)} or "
                            f"{-(-recipe.patch // divisor) * divisor}")
        # FOV pixel coordinates (subsampled) for patch centres
        self.centres = []
        for it in items:
            ys, xs = np.nonzero(it.fov)
            if ys.size == 0:
                ys, xs = np.nonzero(np.ones_like(it.fov))
            step = max(1, ys.size // 20000)
            self.centres.append(np.stack([xs[::step], ys[::step]], 1).astype(np.float32))
        if recipe.patch is None:
            small = min(min(it.image.shape[:2]) for it in items)
            if small < divisor:
                raise EdgeError(f"an image side of {small} px is smaller than the divisor {divisor}")

    def batches(self, rng: np.random.Generator) -> list[list[tuple[int, int]]]:
        """The epoch's batches as lists of (item index, draw)."""
        per = self.recipe.patches_per_image if self.recipe.patch else 1
        order = [(i, k) for i in range(len(self.items)) for k in range(per)]
        perm = rng.permutation(len(order))
        order = [order[j] for j in perm]
        b = self.recipe.batch_size
        return [order[i:i + b] for i in range(0, len(order), b)]

    def make(self, batch: list[tuple[int, int]], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.divisor
        if self.recipe.patch:
            size = (self.recipe.patch, self.recipe.patch)
        else:
            hs = [self.items[i].image.shape[0] for i, _ in batch]
            ws = [self.items[i].image.shape[1] for i, _ in batch]
            size = (min(hs) // d * d, min(ws) // d * d)
        xs, ys = [], []
        prep = Preprocess.from_spec(self.spec)
        for i, _ in batch:
            it = self.items[i]
            h, w = it.image.shape[:2]
            if self.recipe.patch:
                c = self.centres[i][rng.integers(len(self.centres[i]))]
                # an even side puts the window centre between pixels: keep the window on the pixel grid
                centre = (float(c[0]) + (size[1] - 1) / 2 % 1, float(c[1]) + (size[0] - 1) / 2 % 1)
            else:  # a random crop of the largest divisor-multiple size
                sx, sy = w - size[1], h - size[0]
                centre = ((size[1] - 1) / 2 + rng.integers(0, sx + 1), (size[0] - 1) / 2 + rng.integers(0, sy + 1))
            img, lab, _ = aug.augment(it.image, it.label, None, rng, self.cfg, size, centre)
            xs.append(prep.image(img)[0])
            ys.append(lab[None].astype(np.float32))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


# ------------------------------------------------------------------------------------------------ the model

class DeepSupervision(nn.Module):
    """HybridNetSeg's training-only side outputs: a 1x1 conv on each of the decoder stages before the last
    (``decode4``, ``decode3``, ``decode2``), captured by forward hooks. The model's own state dict is
    unchanged, so its checkpoint stays loadable for export."""

    STAGES = ("decode4", "decode3", "decode2")

    def __init__(self, model: nn.Module, divisor: int) -> None:
        super().__init__()
        self.stages = [getattr(model, n) for n in self.STAGES if hasattr(model, n)]
        self.captured: list[torch.Tensor] = []
        self.hooks = [s.register_forward_hook(lambda _m, _i, out: self.captured.append(out)) for s in self.stages]
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, model.spec.in_channels, 2 * divisor, 2 * divisor))
        model.train(was)
        self.heads = nn.ModuleList(nn.Conv2d(int(c.shape[1]), 1, 1) for c in self.captured)
        self.captured.clear()

    def outputs(self, final: torch.Tensor) -> list[torch.Tensor]:
        side = [head(f) for head, f in zip(self.heads, self.captured)]
        self.captured.clear()
        return [*side, final]


def _optimizer(name: str, params, lr: float, wd: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    raise EdgeError(f"unknown optimizer '{name}' in the recipe; choices: adam, adamw")


def validate(model: nn.Module, items: list[Loaded]) -> tuple[Confusion, Histogram]:
    """Pooled confusion at 0.5 and probability histogram over the validation images (inside the FOV)."""
    total = Confusion(0, 0, 0, 0)
    hist = Histogram()
    for it in items:
        prob = predict_prob(model, it.image)
        total = total + confusion(prob > 0.5, it.label, it.fov)
        hist = hist + Histogram.of(prob, it.label, it.fov)
    return total, hist


# ------------------------------------------------------------------------------------------------- training

def _effective_recipe(cfg: TrainConfig) -> Recipe:
    r = recipe_for(cfg.model)
    over = {}
    for key in ("epochs", "batch_size", "lr", "weight_decay", "patches_per_image"):
        v = getattr(cfg, key)
        if v is not None:
            over[key] = v
    if cfg.patch is not None:
        over["patch"] = cfg.patch or None
    r = replace(r, **over)
    for key in ("epochs", "batch_size"):
        if getattr(r, key) < 1:
            raise EdgeError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(r, key)}")
    if not (r.lr > 0 and math.isfinite(r.lr)):
        raise EdgeError(f"--lr must be a positive number, got {r.lr}")
    return r


def _write_log(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    cols = ["epoch", "train_loss", "val_dice", "best_val_dice", "lr", "seconds", "status"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    write_atomic(path, buf.getvalue().encode())


def train(cfg: TrainConfig, items: list[Loaded] | None = None, log=_log) -> TrainResult:
    """Train ``cfg.model``; ``items`` overrides the dataset (already decoded, with labels). See the module
    docstring for the outputs. Raises :class:`EdgeError` on bad input, :class:`TrainingDiverged` on NaN."""
    from models import create_model, get_spec

    spec = get_spec(cfg.model)
    name = spec.name
    recipe = _effective_recipe(cfg)
    loss_fn = LOSSES[recipe.loss]
    out = Path(cfg.out or f"runs/{name}-{cfg.dataset}")
    resume_path = None
    if cfg.resume:
        resume_path = Path(cfg.resume)
        if resume_path.is_dir():
            resume_path = resume_path / "resume.pt"
        if not resume_path.is_file():
            raise EdgeError(f"--resume {cfg.resume}: no such file (pass a run folder or its resume.pt)")
        if cfg.out is None:
            out = resume_path.parent
    elif (out / "resume.pt").exists() and not cfg.force:
        raise EdgeError(f"{out} already holds a training run; pass --resume {out} to continue it or --force to "
                        "start over")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    with output_folder(out):  # a dataset that does not load leaves no empty run folder behind
        if items is None:
            items = load_items(cfg.dataset, cfg.data, cfg)
        if not items:
            raise EdgeError(f"{cfg.dataset}: the training split is empty")
    train_items, val_items = split_validation(items, cfg.val_fraction, cfg.seed)
    sampler = Sampler(train_items, recipe, spec.divisor, spec, cfg.augment)

    model = create_model(name)
    aux = DeepSupervision(model, spec.divisor) if recipe.loss == "mixed" else None
    params = list(model.parameters()) + (list(aux.parameters()) if aux is not None else [])
    opt = _optimizer(recipe.optimizer, params, recipe.lr, recipe.weight_decay)

    history: list[dict] = []
    start_epoch, best_dice, best_epoch = 0, -1.0, 0
    if resume_path is not None:
        state = _load_resume(resume_path, name)
        model.load_state_dict(state["model"])
        if aux is not None and state.get("aux"):
            aux.load_state_dict(state["aux"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, best_dice, best_epoch = state["epoch"], state["best_dice"], state["best_epoch"]
        history = state["history"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        if start_epoch >= recipe.epochs:
            raise EdgeError(f"{resume_path} has already trained {start_epoch} epochs; pass --epochs above "
                            f"{start_epoch} to continue")
        log(f"resuming {name} from epoch {start_epoch} (best validation Dice {best_dice:.4f} at epoch {best_epoch})")

    data_meta = {"dataset": cfg.dataset, "root": str(cfg.data) if cfg.data else None,
                 "train": [it.name for it in train_items], "val": [it.name for it in val_items],
                 "val_fraction": cfg.val_fraction, "seed": cfg.seed}
    if cfg.dataset == "synthetic":
        data_meta["synthetic"] = {"count": cfg.synthetic_count, "size": list(cfg.synthetic_size)}

    def sidecar(epochs: int, metrics: dict, digest: str, file: str, stopped: str) -> dict:
        return {"format": CHECKPOINT_FORMAT, "format_version": 1, "model": name, "spec": spec.to_meta(),
                "weights": {"file": file, "sha256": digest}, "data": data_meta, "recipe": recipe.to_meta(),
                "augment": asdict(sampler.cfg), "epochs": epochs, "best_epoch": best_epoch, "metrics": metrics,
                "stopped": stopped, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": versions(("torch", "numpy"))}

    log(f"training {name} on {cfg.dataset}: {len(train_items)} train / {len(val_items)} val images, "
        f"{'patches ' + str(recipe.patch) if recipe.patch else 'whole images'}, batch {recipe.batch_size}, "
        f"{recipe.loss} loss, {recipe.optimizer} lr {recipe.lr:g}, {recipe.epochs} epochs -> {out}")
    stopped = "completed"
    epoch = start_epoch
    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        batches = sampler.batches(rng)
        for step, batch in enumerate(batches, 1):
            x, y = sampler.make(batch, rng)
            out_t = model(x)
            loss = loss_fn(aux.outputs(out_t) if aux is not None else out_t, y)
            if not torch.isfinite(loss):
                history.append({"epoch": epoch, "train_loss": float(loss.item()), "status": f"diverged at step {step}"})
                _write_log(out / "loss.csv", history)
                last = out / "last.pth"
                where = (f"the last good checkpoint is {last} (epoch {epoch - 1}), the best {out / 'best.pth'} "
                         f"(epoch {best_epoch})" if last.is_file() else "no checkpoint was written (first epoch)")
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch} step {step}; training stopped "
                                       f"and {where}; lower --lr (now {recipe.lr:g}) or check the labels")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.item()))
        val_c, _ = validate(model, val_items)
        val_dice = val_c.dice
        sd = model.state_dict()
        is_best = val_dice > best_dice
        if is_best:
            best_dice, best_epoch = val_dice, epoch
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
               "best_val_dice": best_dice, "lr": opt.param_groups[0]["lr"],
               "seconds": round(time.perf_counter() - t0, 3), "status": "best" if is_best else ""}
        history.append(row)
        digest = _save_state_dict(sd, out / "last.pth")
        _write_json(out / "last.json", sidecar(epoch, {"val_dice": val_dice}, digest, "last.pth", "in progress"))
        if is_best:
            digest = _save_state_dict(sd, out / "best.pth")
            _write_json(out / "best.json", sidecar(epoch, {"val_dice": val_dice}, digest, "best.pth", "in progress"))
        _save_resume(out / "resume.pt", model, aux, opt, epoch, best_dice, best_epoch, history, rng, cfg, recipe)
        _write_log(out / "loss.csv", history)
        log(f"epoch {epoch}/{recipe.epochs}  loss {row['train_loss']:.4f}  val Dice {val_dice:.4f}  "
            f"(best {best_dice:.4f} @ {best_epoch})  {row['seconds']:.1f} s")
        if recipe.patience and epoch - best_epoch >= recipe.patience:
            stopped = f"early stopping: no better validation Dice for {recipe.patience} epochs"
            log(stopped)
            break

    # the decision threshold is chosen on validation data with the best weights (never on test data)
    best_sd = torch.load(out / "best.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(best_sd)
    val_c, hist = validate(model, val_items)
    thr, thr_dice = hist.best_threshold()
    metrics = {"val_dice": val_c.dice, "val_sensitivity": val_c.sensitivity, "val_specificity": val_c.specificity,
               "threshold": thr, "val_dice_at_threshold": thr_dice,
               "threshold_source": "validation" if cfg.val_fraction > 0 else "training images"}
    digest = hashlib.sha256((out / "best.pth").read_bytes()).hexdigest()
    _write_json(out / "best.json", sidecar(best_epoch, metrics, digest, "best.pth", stopped))
    log(f"best: epoch {best_epoch}, validation Dice {val_c.dice:.4f} at 0.5, {thr_dice:.4f} at threshold {thr:.3f}"
        f" -> {out / 'best.pth'}")
    return TrainResult(out, out / "best.pth", out / "last.pth", epoch, best_epoch, best_dice, thr, stopped, history)


def _save_resume(path: Path, model, aux, opt, epoch, best_dice, best_epoch, history, rng, cfg, recipe) -> None:
    state = {"format": CHECKPOINT_FORMAT + "-resume", "model_name": cfg.model, "model": model.state_dict(),
             "aux": aux.state_dict() if aux is not None else None, "optimizer": opt.state_dict(), "epoch": epoch,
             "best_dice": best_dice, "best_epoch": best_epoch, "history": history, "rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "recipe": recipe.to_meta()}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def _load_resume(path: Path, model: str) -> dict:
    try:
        # weights_only: tensors, numbers, strings and containers are all a resume state holds; anything else in
        # the file could run code when unpickled, so it is refused rather than loaded
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        from models.weights import unpickled_code

        code = unpickled_code(exc)
        if code is None:  # not a pickle at all
            raise EdgeError(f"cannot read {path} (UnpicklingError); pass the resume.pt of a training run") from exc
        raise EdgeError(f"refused to load {path}: it holds Python objects a resume state of edge-train does not "
                        f"({code}; weights-only loading, so no code in it runs); pass the resume.pt of a training "
                        "run") from exc
    except Exception as exc:  # torch raises many types for corrupt files
        raise EdgeError(f"cannot read {path} ({type(exc).__name__}); pass the resume.pt of a training run") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT + "-resume":
        raise EdgeError(f"{path} is not a resume state of edge-train (a plain state dict cannot resume the "
                        "optimizer); pass the run folder or its resume.pt")
    if state.get("model_name") != model:
        raise EdgeError(f"{path} resumes model '{state.get('model_name')}', not '{model}'; pass a run of '{model}'")
    return state


# ------------------------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edge-train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a zoo model with its paper's recipe (loss, optimizer, augmentations); the best "
                    "checkpoint by validation Dice is written with a JSON sidecar.",
        epilog="datasets: drive, chase, hrf, stare (as their authors ship them; the papers' splits), folder "
               "(images/ + labels/), synthetic (generated), cc0 (scikit-image's CC0 retina() with derived labels "
               "+ synthetic: the data of the project's default weights)\n\n"
               "example: edge-train m2unet --dataset drive --data DRIVE/ --out runs/m2unet-drive\n"
               "         edge-export m2unet --weights runs/m2unet-drive/best.pth")
    ap.add_argument("model", help="a registered model name")
    ap.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASET_CHOICES)}")
    ap.add_argument("--data", help="the dataset folder (not needed for synthetic and cc0)")
    ap.add_argument("--epochs", type=int, help="epochs (default: the paper's)")
    ap.add_argument("--batch-size", type=int, help="batch size (default: the paper's)")
    ap.add_argument("--patch", type=int, help="square patch side (0: whole images; default: the paper's)")
    ap.add_argument("--patches-per-image", type=int, help="patches per image and epoch (patch training)")
    ap.add_argument("--lr", type=float, help="learning rate (default: the paper's)")
    ap.add_argument("--weight-decay", type=float, help="weight decay (default: the paper's)")
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="share of the training images held out for validation (default 0.2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, sampling and initialisation")
    ap.add_argument("--out", help="run folder (default runs/<model>-<dataset>)")
    ap.add_argument("--resume", metavar="RUN", help="continue a run (its folder or resume.pt)")
    ap.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    ap.add_argument("--no-augment", action="store_true", help="train without the paper's augmentations")
    ap.add_argument("--synthetic-count", type=int, default=20, help="synthetic training images (default 20)")
    ap.add_argument("--synthetic-size", default="584x565", help="synthetic image size HxW (default 584x565)")
    ap.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's)")
    ap.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from edge.errors import look_up_option
        from models import get_spec

        get_spec(args.model)
        dataset = look_up_option(args.dataset, DATASET_CHOICES, "dataset")
        cfg = TrainConfig(model=args.model, dataset=dataset, data=args.data, out=args.out, epochs=args.epochs,
                          batch_size=args.batch_size, patch=args.patch, lr=args.lr, weight_decay=args.weight_decay,
                          patches_per_image=args.patches_per_image, val_fraction=args.val_fraction, seed=args.seed,
                          resume=args.resume, synthetic_count=args.synthetic_count,
                          synthetic_size=parse_size(args.synthetic_size, "--synthetic-size", 16), threads=args.threads,
                          augment=not args.no_augment, force=args.force)
        r = train(cfg)
        print(f"{r.best}  (epoch {r.best_epoch}, validation Dice {r.best_dice:.4f}, threshold {r.threshold:.3f}; "
              f"{r.stopped})")
        return 0

    return run_cli(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
