"""`edge-eval`: metrics of a checkpoint, an exported package or a folder of predictions on a dataset split.

Per image, inside the field of view: Dice/F1, IoU, accuracy, sensitivity, specificity at 0.5 and at a
threshold chosen beforehand (``--threshold``, or the checkpoint sidecar's, which ``edge-train`` chose on its
validation images, or with ``--threshold-from-train`` the Dice-optimal one on the dataset's training split:
never on the split being evaluated); ROC AUC and IterNet's connectivity (threshold-free). Mean and sample
standard deviation over images, pooled ROC and PR curves as PNG. Outputs (written atomically) in ``--out``:
``per_image.csv``, ``summary.json``, ``roc.png``, ``pr.png``.

Sources:

* a ``.pth``/``.pt`` checkpoint: PyTorch, tiled and blended as the runtime does (spec tile and overlap);
* a package folder (``meta.json``): through the edge runtime (:func:`edge.segment.segment`, TVM or ONNX
  Runtime), exactly as on the device;
* any other folder: probability maps named like the samples (``21_training.png``; 8-bit 0..255 or 16-bit
  0..65535 greyscale, or binary maps).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, look_up_option, parse_size, run_cli
from edge.imageio import IMAGE_SUFFIXES, output_folder, write_atomic
from models.train import metrics as M
from models.train.datasets import Loaded, Sample, load_sample, load_split

THRESHOLD_METRICS = ("dice", "iou", "accuracy", "sensitivity", "specificity")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Predictor:
    """``fn(loaded) -> prob`` plus what it is, for the report."""

    kind: str
    fn: Callable[[Loaded], np.ndarray]
    meta: dict = field(default_factory=dict)
    threshold: float | None = None
    threshold_source: str | None = None


def checkpoint_predictor(path: str | Path, model: str | None, threads: int | None = None) -> Predictor:
    import torch

    from models import create_model
    from models.train.predict import predict_prob
    from models.train.trainer import check_checkpoint_model, read_sidecar

    path = Path(path)
    side = read_sidecar(path)
    if model is None:
        if side is None:
            raise EdgeError(f"{path.name} has no sidecar ({path.with_suffix('.json').name}) naming its model; "
                            "pass --model NAME")
        model = side["model"]
    check_checkpoint_model(path, model)
    if threads:
        torch.set_num_threads(threads)
    net = create_model(model, weights=path)
    thr = (side or {}).get("metrics", {}).get("threshold")
    src = f"{(side or {}).get('metrics', {}).get('threshold_source', 'validation')} (from {path.with_suffix('.json').name})"
    return Predictor("checkpoint", lambda it: predict_prob(net, it.image),
                     {"checkpoint": str(path), "model": model, "trained_on": (side or {}).get("data")},
                     thr, src if thr is not None else None)


def package_predictor(path: str | Path, backend: str = "auto", threads: int | None = None,
                      native_scale: bool = False) -> Predictor:
    """Through :func:`edge.segment.segment` as edge-run does: photos resampled by their FOV to the package's training
    scale unless ``native_scale`` (recorded per image under ``scale`` in the summary's source)."""
    from edge.backends import create_backend
    from edge.package import load_package
    from edge.scale import FOV_UNMEASURABLE, run_note
    from edge.segment import segment

    pkg = load_package(path)
    choice = create_backend(pkg, backend, threads)
    target = pkg.info.preprocess.fov_diameter_px if pkg.info.preprocess else None
    scale: dict = {"native_scale": native_scale, "training_fov_px": target, "images": {}}
    _log(run_note(native_scale, target) or f"scale: images resampled by their FOV to {target:g} px (the weights' "
         "training scale); --native-scale to turn off")

    def fn(it: Loaded) -> np.ndarray:
        r = segment(it.image, pkg, choice.backend, fov=it.fov, native_scale=native_scale)
        scale["images"][it.name] = r.scale.to_dict()
        if r.scale.notice or r.scale.status == FOV_UNMEASURABLE:
            _log(f"notice: {it.name}: scale: {r.scale.describe()}")
        return r.prob

    return Predictor("package", fn, {"package": str(path), "model": pkg.model_name,
                                     "backend": type(choice.backend).__name__, "fallback": choice.fallback,
                                     "tile": list(pkg.tile), "scale": scale})


def folder_predictor(path: str | Path) -> Predictor:
    import cv2

    path = Path(path)
    files = {p.stem: p for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}

    def fn(it: Loaded) -> np.ndarray:
        p = files.get(it.name)
        if p is None:
            raise EdgeError(f"no prediction for {it.name} in {path} (expected {it.name}.png); found "
                            f"{len(files)} file(s): {', '.join(sorted(files)[:4]) or 'none'}")
        img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise EdgeError(f"{p} does not decode as an image; re-write the prediction")
        if img.ndim == 3:
            img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY) if img.dtype == np.uint8 else img[..., 0]
        peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype)
        if peak is None:
            raise EdgeError(f"{p} has {img.dtype} pixels; save probability maps as 8- or 16-bit greyscale")
        if img.shape != it.image.shape[:2]:
            raise EdgeError(f"prediction {p.name} is {img.shape[1]}x{img.shape[0]} but the image is "
                            f"{it.image.shape[1]}x{it.image.shape[0]}; pass predictions of this dataset")
        return img.astype(np.float32) / peak

    return Predictor("predictions", fn, {"predictions": str(path)})


def make_predictor(source: str | Path, model: str | None = None, backend: str = "auto",
                   threads: int | None = None, native_scale: bool = False) -> Predictor:
    from edge.package import ARCHIVE_SUFFIXES, LIBRARY, META, ONNX

    p = Path(source)
    if p.is_file() and p.suffix.lower() in (".pth", ".pt"):
        return checkpoint_predictor(p, model, threads)
    if p.is_dir() and p.suffix.lower() in (".pth", ".pt"):
        raise EdgeError(f"{p} is a folder, not a checkpoint file; pass the .pth/.pt file itself")
    # a package folder, or something meant as one (members without meta.json, an archive, meta.json itself):
    # load_package says what is wrong with it, instead of it being read as a folder of predictions
    if (p.is_dir() and any((p / m).exists() or (p / m).is_symlink() for m in (META, ONNX, LIBRARY))) or \
            (p.is_file() and (p.name in (META, ONNX, LIBRARY) or p.name.lower().endswith(ARCHIVE_SUFFIXES))):
        return package_predictor(p, backend, threads, native_scale)
    if p.is_dir():
        return folder_predictor(p)
    raise EdgeError(f"{source}: expected a .pth/.pt checkpoint, a package folder (with meta.json) or a folder of "
                    "probability maps; found " + ("no such path" if not p.exists() else "another kind of file"))


def _summary(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return None, None
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)


def threshold_from_train(pred: Predictor, dataset: str, data: str | None, **kw) -> float:
    """The Dice-optimal threshold of the pooled training split (never the evaluated split)."""
    hist = M.Histogram()
    for s in load_split(dataset, data, "train", **kw):
        it = load_sample(s)
        if it.label is None:
            raise EdgeError(f"{dataset} train: {it.name} has no label; cannot choose a threshold on it")
        hist = hist + M.Histogram.of(pred.fn(it), it.label, it.fov)
    return hist.best_threshold()[0]


def _plot(out: Path, hist: M.Histogram, ops: dict[str, float]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    c = hist.curves()
    auc = float(np.trapezoid(c["tpr"][::-1], c["fpr"][::-1])) if not np.isnan(c["fpr"]).all() else float("nan")
    files = {}
    for name, (x, y, xl, yl) in {"roc": (c["fpr"], c["tpr"], "false positive rate (1 - specificity)",
                                         "true positive rate (sensitivity)"),
                                 "pr": (c["recall"], c["precision"], "recall (sensitivity)", "precision")}.items():
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        label = f"pooled, AUC {auc:.4f}" if name == "roc" else "pooled"
        ax.plot(x, y, lw=1.5, label=label)
        for op_name, t in ops.items():
            k = min(int(round(t * M.CURVE_BINS)), M.CURVE_BINS - 1)
            what = "threshold 0.5" if op_name == "0.5" else f"chosen threshold {t:.3f}"
            ax.plot([x[k]], [y[k]], "o", label=f"{what} (pooled Dice {c['dice'][k]:.3f})")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if name == "roc" else "lower left", fontsize=8)
        ax.set_title("ROC" if name == "roc" else "precision-recall")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        plt.close(fig)
        write_atomic(out / f"{name}.png", buf.getvalue())
        files[name] = f"{name}.png"
    return files


@dataclass
class EvalResult:
    out: Path
    summary: dict
    rows: list[dict]


def evaluate(source: str | Path, dataset: str, data: str | None = None, split: str = "test",
             model: str | None = None, out: str | Path | None = None, threshold: float | None = None,
             threshold_from_training: bool = False, backend: str = "auto", threads: int | None = None,
             connectivity: bool = True, samples: list[Sample] | None = None, log=_log, native_scale: bool = False,
             **split_kw) -> EvalResult:
    """Evaluate ``source`` on ``dataset``'s ``split``; write CSV, JSON and PNGs to ``out``. ``native_scale``: a
    package's photos are tiled at their own resolution instead of resampled to its training scale."""
    if threshold is not None and not 0 <= threshold <= 1:
        raise EdgeError(f"--threshold {threshold} is outside [0, 1]")
    pred = make_predictor(source, model, backend, threads, native_scale)
    samples = samples if samples is not None else load_split(dataset, data, split, **split_kw)
    if threshold is not None:
        chosen, chosen_src = float(threshold), "given (--threshold)"
    elif threshold_from_training:
        if split == "train":
            raise EdgeError("--threshold-from-train on the training split would choose it on the evaluated images; "
                            "evaluate another split or pass --threshold")
        chosen, chosen_src = threshold_from_train(pred, dataset, data, **split_kw), f"{dataset} training split (Dice-optimal)"
    elif pred.threshold is not None:
        chosen, chosen_src = float(pred.threshold), pred.threshold_source
    else:
        chosen, chosen_src = None, None
        log("note: no threshold chosen beforehand (no --threshold, no sidecar, no --threshold-from-train): "
            "reporting at 0.5 only")
    thresholds = {"0.5": 0.5}
    if chosen is not None:
        thresholds["chosen"] = chosen

    out = Path(out or f"runs/eval/{Path(source).stem}-{dataset}-{split}")
    with output_folder(out):
        rows: list[dict] = []
        hist = M.Histogram()
        for i, s in enumerate(samples, 1):
            t0 = time.perf_counter()
            it = load_sample(s)
            if it.label is None:
                raise EdgeError(f"{dataset} {split}: {it.name} has no ground truth; edge-eval needs a label per image")
            prob = pred.fn(it)
            m = M.image_metrics(prob, it.label, it.fov, thresholds, with_connectivity=connectivity)
            hist = hist + M.Histogram.of(prob, it.label, it.fov)
            row = {"name": it.name, "fov": it.fov_source}
            for tname in thresholds:
                for k in THRESHOLD_METRICS:
                    row[f"{k}@{tname}"] = m[tname][k]
            row["auc"] = m["auc"]
            row["connectivity"] = m["connectivity"]
            row["seconds"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
            log(f"[{i}/{len(samples)}] {it.name}: Dice {row['dice@0.5']:.4f}"
                + (f" ({row['dice@chosen']:.4f} at {chosen:.3f})" if chosen is not None else "")
                + (f", AUC {row['auc']:.4f}" if row["auc"] is not None else ""))
        if not rows:
            raise EdgeError(f"{dataset} {split}: no images to evaluate")

        cols = [c for c in rows[0] if c not in ("name", "fov")]
        mean, std = {}, {}
        for c in cols:
            mean[c], std[c] = _summary([r[c] for r in rows])
        ops = {"0.5": 0.5, **({"chosen": chosen} if chosen is not None else {})}
        pooled_thr, pooled_dice = hist.best_threshold()
        summary = {
            "source": {"kind": pred.kind, **pred.meta},
            "dataset": dataset, "data": str(data) if data else None, "split": split, "images": len(rows),
            "thresholds": {"0.5": 0.5, "chosen": chosen, "chosen_source": chosen_src},
            "mean": mean, "std": std, "std_note": "sample standard deviation over images (ddof 1)",
            "pooled": {"dice_optimal_threshold_on_this_split": pooled_thr, "dice_at_it": pooled_dice,
                       "note": "oracle value for reference only: chosen on the evaluated images"},
            "per_image": "per_image.csv",
        }
        summary["curves"] = _plot(out, hist, ops)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        write_atomic(out / "per_image.csv", buf.getvalue().encode())
        write_atomic(out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
    return EvalResult(out, summary, rows)


def build_parser() -> argparse.ArgumentParser:
    from models.train.datasets import DATASETS

    ap = argparse.ArgumentParser(
        prog="edge-eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Segmentation metrics inside the field of view (Dice/F1, IoU, accuracy, sensitivity, "
                    "specificity, ROC AUC, connectivity) of a checkpoint, package or prediction folder.",
        epilog="example: edge-eval runs/m2unet-drive/best.pth --dataset drive --data DRIVE/ --split test\n"
               "         edge-eval packages/m2unet-x86_64-544x544 --dataset drive --data DRIVE/ "
               "--threshold-from-train")
    ap.add_argument("source", help="a .pth checkpoint, a package folder or a folder of probability maps")
    ap.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS)}")
    ap.add_argument("--data", help="the dataset folder")
    ap.add_argument("--split", default="test", help="train or test (default test)")
    ap.add_argument("--model", help="model of a checkpoint without sidecar")
    ap.add_argument("--out", help="output folder (default runs/eval/<source>-<dataset>-<split>)")
    ap.add_argument("--threshold", type=float, help="the second threshold, chosen beforehand")
    ap.add_argument("--threshold-from-train", action="store_true",
                    help="choose the second threshold as the Dice-optimal one on the training split")
    ap.add_argument("--backend", default="auto", help="package backend: auto, tvm, onnxruntime")
    ap.add_argument("--threads", type=int, help="CPU threads")
    ap.add_argument("--native-scale", action="store_true",
                    help="a package: tile each image at its own resolution (default: resampled by its field of view "
                         "to the package's training scale, as edge-run does)")
    ap.add_argument("--no-connectivity", action="store_true", help="skip the connectivity metric (slow on HRF)")
    ap.add_argument("--synthetic-count", type=int, default=20)
    ap.add_argument("--synthetic-size", default="584x565")
    ap.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from models.train.datasets import DATASETS, SPLITS

        dataset = look_up_option(args.dataset, DATASETS, "dataset")
        kw = {}
        if dataset == "synthetic":
            kw = {"count": args.synthetic_count, "size": parse_size(args.synthetic_size, "--synthetic-size", 16)}
        r = evaluate(args.source, dataset, args.data, look_up_option(args.split, SPLITS, "split"), args.model,
                     args.out, args.threshold, args.threshold_from_train, args.backend, args.threads,
                     not args.no_connectivity, native_scale=args.native_scale, **kw)
        m = r.summary["mean"]
        line = f"{r.summary['images']} images: Dice {m['dice@0.5']:.4f} at 0.5"
        if "dice@chosen" in m:
            line += f", {m['dice@chosen']:.4f} at {r.summary['thresholds']['chosen']:.3f}"
        if m.get("auc") is not None:
            line += f", AUC {m['auc']:.4f}"
        print(f"{line} -> {r.out}")
        return 0

    return run_cli(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
