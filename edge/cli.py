"""``edge-run``: segment fundus photos on the device with a vessel-edge package; a thin layer over edge.segment."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError, InputError, look_up_option, run_cli

# Overlay colours (RGB): predicted vessels without ground truth; with --truth: TP / FP / FN.
VESSEL = (0, 255, 0)
TP, FP, FN = (0, 255, 0), (255, 0, 255), (0, 160, 255)


def build_parser() -> argparse.ArgumentParser:
    from edge.backends import CHOICES, available_cores
    from edge.package import DEFAULT_DIR, ENV_VAR
    from edge.tiling import BLENDS

    p = argparse.ArgumentParser(
        prog="edge-run",
        description="Segment retinal vessels in fundus photos with a vessel-edge package (TVM or ONNX Runtime), "
                    "tile by tile, and write probability maps and binary masks.",
        epilog="Outputs per image in OUTDIR: <stem>_prob.png (8-bit probability), <stem>_mask.png (0/255), "
               "optional <stem>_prob.tif (float32, --float) and <stem>_overlay.png (--overlay; vessels green; "
               "with --truth: true positives green, false positives magenta, false negatives blue). "
               "Probabilities and masks are 0 outside the field of view. "
               "Exit codes: 0 all images ok; 2 usage or other error; 3 package error; 4 input error; "
               "with failed images in a batch, the code of the first failure.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                   help="fundus photos (PNG, JPEG, TIFF 8/16-bit, BMP, PPM, GIF) or folders of them (all images "
                        "directly inside, sorted by name)")
    p.add_argument("--package", metavar="DIR", default=None,
                   help=f"package directory made by edge-export (default: ${ENV_VAR}, else {DEFAULT_DIR})")
    p.add_argument("-o", "--out", metavar="OUTDIR", default="edge-out",
                   help="output folder, created if missing (default: ./edge-out)")
    p.add_argument("--mask", metavar="PATH", default=None,
                   help="field-of-view mask (file for every image, or folder with <stem>.* / <stem>_*.* per "
                        "image); default: estimated from the dark border of each photo")
    p.add_argument("--truth", metavar="PATH", default=None,
                   help="ground-truth vessel map (file, or folder matched by stem like --mask): report Dice, "
                        "sensitivity, specificity and accuracy inside the field of view")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="probability threshold of the binary mask (default: the package's, usually 0.5)")
    p.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="minimum overlap of neighbouring tiles in pixels, rounded up to the model's divisor "
                        "(default: the package's)")
    p.add_argument("--blend", default=None, metavar="MODE",
                   help=f"tile blending weights: {', '.join(BLENDS)} (default: the package's, usually gaussian)")
    p.add_argument("--backend", default="auto", metavar="NAME",
                   help=f"{', '.join(CHOICES)}; auto = tvm when the package's library runs on this machine, "
                        "else onnxruntime, announced (default: auto)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=f"inference threads (default: all cores of the affinity set, {available_cores()} here)")
    p.add_argument("--cores", default=None, metavar="LIST",
                   help="run only on these CPU cores, e.g. 4,5 (RK3399 big cores) or 0-3 (default: the cores this "
                        "process may use now)")
    p.add_argument("--native-scale", action="store_true",
                   help="tile each photo at its own resolution; by default a photo is resampled by its field of view "
                        "to the scale the package's weights were trained at (meta.json preprocess.fov_diameter_px) "
                        "and the probability map brought back to the photo's size")
    p.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    p.add_argument("--float", dest="float_out", action="store_true", help="also write <stem>_prob.tif (float32)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the run summary as JSON")
    p.add_argument("--overwrite", action="store_true",
                   help="replace outputs that already exist in OUTDIR (default: refuse before any work)")
    p.add_argument("--max-megapixels", type=float, default=None, metavar="MPX",
                   help="largest image decoded, in megapixels (default: 64; each megapixel needs ~25 MB "
                        "while it is segmented)")
    p.add_argument("-v", "--verbose", action="store_true", help="per-image timings; tracebacks on errors")
    return p


def parse_cores(text: str) -> list[int]:
    cores: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                cores.update(range(a, b + 1))
            elif part:
                cores.add(int(part))
    except ValueError:
        raise InputError(f"--cores {text!r} is not a core list; write it like 4,5 or 0-3") from None
    if not cores or min(cores) < 0:
        raise InputError(f"--cores {text!r} is not a core list; write it like 4,5 or 0-3")
    return sorted(cores)


def expand_inputs(items: list[str]) -> list[Path]:
    from edge.imageio import IMAGE_SUFFIXES, list_images

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise InputError(f"no images in folder {p} (looked for {', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        else:
            paths.append(p)
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems and stems[p.stem] != p:
            raise InputError(f"{stems[p.stem]} and {p} share the name '{p.stem}', so their outputs would "
                             "overwrite each other; run them with different -o folders")
        stems[p.stem] = p
    return list(dict.fromkeys(paths))


def companion(path: Path, image: Path, what: str) -> Path:
    """``path`` itself, or for a folder the one file named <stem>.* or <stem>_*.* for ``image``."""
    if not path.is_dir():
        return path
    from edge.imageio import IMAGE_SUFFIXES

    stem = image.stem
    hits = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and (f.stem == stem or f.stem.startswith(stem + "_")))
    exact = [f for f in hits if f.stem == stem]
    if exact:
        hits = exact
    if len(hits) != 1:
        problem = "no" if not hits else f"{len(hits)} candidate ({', '.join(f.name for f in hits)})"
        raise InputError(f"{problem} {what} for {image.name} in {path} (looked for {stem}.* and {stem}_*.*); "
                         f"name the {what} after the image")
    return hits[0]


def output_names(stem: str, overlay: bool, float_out: bool) -> list[str]:
    """The file names ``render_outputs`` writes for an image (kept in one place with it)."""
    names = [f"{stem}_prob.png", f"{stem}_mask.png"]
    if float_out:
        names.append(f"{stem}_prob.tif")
    if overlay:
        names.append(f"{stem}_overlay.png")
    return names


def check_no_overwrite(images: list[Path], out: Path, args: argparse.Namespace) -> None:
    """Refuse, before any work, to replace outputs that are already there (unless --overwrite)."""
    if args.overwrite:
        return
    existing = [out / n for p in images for n in output_names(p.stem, args.overlay, args.float_out)
                if (out / n).exists()]
    if args.json and Path(args.json).exists():
        existing.append(Path(args.json))
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise InputError(f"{existing[0]}{more} already exist; pass --overwrite to replace them or choose "
                         "another output folder with -o")


class OutputLock:
    """An exclusive lock on the output folder for the whole run: a second edge-run into the same folder is
    refused at once instead of interleaving its files with ours. flock on the folder itself, so no lock file
    is left behind and a killed run releases it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl
        import os

        self.fd = os.open(self.out, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise InputError(f"another edge-run is writing into {self.out}; wait for it to finish or choose "
                             "another output folder with -o") from None
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def check_writable(out: Path) -> None:
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".edge-run-check."):
            pass
    except OSError as exc:
        raise InputError(f"cannot write into output folder {out} ({exc.strerror}); choose a writable folder "
                         "with -o") from exc


@dataclass
class ImageReport:
    input: str
    ok: bool = False
    error: str | None = None
    exit_code: int | None = None
    size: list[int] | None = None
    tiles: int | None = None
    fov_source: str | None = None
    fov_fraction: float | None = None
    scale: dict[str, Any] | None = None  # edge.scale.ScaleInfo.to_dict(): resampled by the FOV, or why not
    timings_ms: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None


def quantize(prob: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] -> uint8 0..255, rounded, with one float temporary (an HRF map is 33 MB)."""
    q = np.multiply(prob, np.float32(255))
    np.rint(q, out=q)
    return q.astype(np.uint8)


def render_outputs(image: np.ndarray, result: Any, truth: np.ndarray | None, stem: str, out: Path,
                   overlay: bool, float_out: bool) -> dict[str, tuple[Path, bytes]]:
    """Encode every output of one image in memory (so a failure writes nothing)."""
    from edge.imageio import encode_image

    names = iter(output_names(stem, overlay, float_out))
    files = {
        "prob": (out / next(names), encode_image(quantize(result.prob), ".png")),
        "mask": (out / next(names), encode_image(result.mask.astype(np.uint8) * 255, ".png")),
    }
    if float_out:
        files["prob_float"] = (out / next(names), encode_image(result.prob.astype(np.float32), ".tif"))
    if overlay:
        ov = image.copy()
        if truth is None:
            ov[result.mask] = VESSEL
        else:
            t = truth & result.fov
            ov[result.mask & t] = TP
            ov[result.mask & ~t] = FP
            ov[~result.mask & t] = FN
        files["overlay"] = (out / next(names), encode_image(ov, ".png"))
    return files


def write_outputs(files: dict[str, tuple[Path, bytes]]) -> dict[str, str]:
    from edge.imageio import write_atomic

    written: list[Path] = []
    try:
        for path, data in files.values():
            written.append(write_atomic(path, data))
    except BaseException:
        for path in written:  # all outputs of an image or none
            path.unlink(missing_ok=True)
        raise
    return {name: str(path.resolve()) for name, (path, _) in files.items()}


def _fmt(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_summary(s: dict[str, Any]) -> str:
    b = s["backend"]
    lines = [f"images: {s['ok']} ok, {s['failed']} failed"
             + (f" ({', '.join(Path(i['input']).name for i in s['images'] if not i['ok'])})" if s["failed"] else "")]
    per = s["per_image_s"]
    lines.append(f"time: {s['total_s']:.2f} s total ({s['setup_s']:.2f} s setup), "
                 + (f"{per:.3f} s per image" if per is not None else "no image done")
                 + (f" (inference {s['inference_per_image_s']:.3f} s, {s['tiles_per_image']:.0f} tiles of "
                    f"{s['options']['tile'][0]}x{s['options']['tile'][1]})" if per is not None else ""))
    lines.append(f"backend: {b['name']} ({b['device']}, requested {b['requested']}), threads {b['threads']}"
                 + (f" on cores {','.join(map(str, b['cores']))}" if b["cores"] else "")
                 + f", machine {s['machine']}")
    if b["fallback"]:
        lines.append(f"fallback: {b['fallback']}")
    scale = format_scale(s)
    if scale:
        lines.append(scale)
    m = s["metrics"]
    if m:
        lines.append(f"metrics (inside the FOV, pooled over {m['images']} images): dice {_fmt(m['dice'])}, "
                     f"sensitivity {_fmt(m['sensitivity'])}, specificity {_fmt(m['specificity'])}, "
                     f"accuracy {_fmt(m['accuracy'])}")
    lines.append(f"outputs: {s['out']}")
    return "\n".join(lines)


def format_scale(s: dict[str, Any]) -> str | None:
    """The summary's ``scale:`` line: how the photos were resampled by their FOV, or why they were not."""
    from edge.scale import AT_TRAINING_SCALE, FOV_UNMEASURABLE, ScaleInfo, run_note

    sc = s["scale"]
    target = sc["training_fov_px"]
    note = run_note(sc["native_scale"], target)
    if note:
        return note
    done = [(Path(i["input"]).name, ScaleInfo.from_dict(i["scale"])) for i in s["images"] if i["ok"]]
    if not done:
        return None
    off = "; --native-scale to turn off"
    if len(done) == 1:
        return f"scale: {done[0][1].describe()}{off}"
    res = [i for _, i in done if i.resampled]
    parts = []
    if res:
        lo, hi = min(i.factor for i in res), max(i.factor for i in res)
        parts.append(f"{len(res)} of {len(done)} images resampled by their FOV to {target:g} px (the weights' "
                     f"training scale), factor {lo:.2f}" + (f"-{hi:.2f}" if hi > lo else ""))
        limited = [n for n, i in done if i.resampled and i.notice]
        if limited:
            parts.append(f"factor limited for {', '.join(limited)}")
    at = [n for n, i in done if i.status == AT_TRAINING_SCALE]
    if at:
        parts.append(f"{len(at)} at the training scale already")
    bad = [n for n, i in done if i.status == FOV_UNMEASURABLE]
    if bad:
        parts.append(f"{len(bad)} at native scale, FOV not measurable: {', '.join(bad)}")
    return "scale: " + "; ".join(parts) + off


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """The work behind ``main``: returns the summary and the exit code; raises EdgeError for fatal errors."""
    from edge.backends import CHOICES, available_cores, set_cores
    from edge.package import load_package
    from edge.tiling import BLENDS

    t_start = time.perf_counter()
    backend_name = look_up_option(args.backend, CHOICES, "backend")
    blend = look_up_option(args.blend, BLENDS, "blend mode") if args.blend else None
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads {args.threads} must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold {args.threshold} is outside [0, 1]; pass a probability")
    if args.max_megapixels is not None and not args.max_megapixels > 0:
        raise InputError(f"--max-megapixels {args.max_megapixels} must be above 0")
    max_pixels = int(args.max_megapixels * 1e6) if args.max_megapixels else None
    cores = parse_cores(args.cores) if args.cores else None
    if cores:
        set_cores(cores)
    threads = args.threads or available_cores()
    images = expand_inputs(args.inputs)
    for opt, value in (("--mask", args.mask), ("--truth", args.truth)):
        if value and not Path(value).exists():
            raise InputError(f"{opt} {value}: no such file or folder")
    pkg = load_package(args.package)
    out = Path(args.out)
    check_writable(out)
    if args.json:
        check_writable(Path(args.json).resolve().parent)
    with OutputLock(out):
        check_no_overwrite(images, out, args)
        return _run_locked(args, t_start, images, pkg, out, cores, threads, backend_name, blend, max_pixels)


def _run_locked(args: argparse.Namespace, t_start: float, images: list[Path], pkg: Any, out: Path,
                cores: list[int] | None, threads: int, backend_name: str, blend: str | None,
                max_pixels: int | None) -> tuple[dict[str, Any], int]:
    """The batch, with the output folder locked: one image at a time, a bad one reported and skipped."""
    from tqdm import tqdm

    from edge.backends import create_backend
    from edge.imageio import read_image, read_mask, write_atomic
    from edge.metrics import Confusion
    from edge.package import host_arch
    from edge.scale import FOV_UNMEASURABLE, RESAMPLED
    from edge.segment import resolve_options, segment

    threshold, overlap, blend = resolve_options(pkg, args.threshold, args.overlap, blend)
    choice = create_backend(pkg, backend_name, threads, pinned=bool(cores))
    options = {"threshold": threshold, "overlap": overlap, "blend": blend, "tile": list(pkg.tile)}
    setup_s = time.perf_counter() - t_start

    reports: list[ImageReport] = []
    pooled: Confusion | None = None
    first_code = 0
    bar = tqdm(images, desc="edge-run", unit="image", file=sys.stderr, disable=True if len(images) < 2 else None)
    for path in bar:
        rep = ImageReport(str(path))
        t0 = time.perf_counter()
        try:
            image = read_image(path, max_pixels)
            shape = image.shape[:2]
            fov = read_mask(companion(Path(args.mask), path, "mask"), shape, "mask") if args.mask else None
            truth = (read_mask(companion(Path(args.truth), path, "ground truth"), shape, "ground truth")
                     if args.truth else None)
            t_read = time.perf_counter()
            result = segment(image, pkg, choice.backend, threshold=options["threshold"],
                             overlap=options["overlap"], blend=options["blend"], fov=fov, truth=truth,
                             native_scale=args.native_scale)
            t_seg = time.perf_counter()
            files = render_outputs(image, result, truth, path.stem, out, args.overlay, args.float_out)
            rep.outputs = write_outputs(files)
            t_end = time.perf_counter()
        except (EdgeError, MemoryError) as exc:
            err = exc if isinstance(exc, EdgeError) else EdgeError(f"out of memory ({exc}); use a smaller image")
            rep.error, rep.exit_code = str(err), err.exit_code
            first_code = first_code or err.exit_code
            tqdm.write(f"error: {path}: {err}", file=sys.stderr)
            if args.verbose:
                tqdm.write(traceback.format_exc(), file=sys.stderr)
            reports.append(rep)
            continue
        rep.ok = True
        rep.size = [int(shape[0]), int(shape[1])]
        rep.tiles = result.tiles
        rep.fov_source, rep.fov_fraction = result.fov_source, round(result.fov_fraction, 6)
        rep.scale = result.scale.to_dict()
        rep.timings_ms = {"read_ms": (t_read - t0) * 1e3, **result.timings_ms,
                          "write_ms": (t_end - t_seg) * 1e3, "image_ms": (t_end - t0) * 1e3}
        if result.confusion is not None:
            rep.metrics = result.confusion.to_dict()
            pooled = result.confusion if pooled is None else pooled + result.confusion
        ph, pw = result.scale.processed  # the tiles were cut from the resampled photo
        cost = result.tiles * pkg.tile[0] * pkg.tile[1] / (ph * pw)
        planned = pkg.info.tiling.planned_for
        if planned and cost > 2 * float(planned.get("cost_factor", 1.0)):
            th, tw = pkg.tile
            what = f"this {ph}x{pw} one"
            if result.scale.resampled:
                what += f" (resampled from {shape[0]}x{shape[1]})"
            tqdm.write(f"notice: {path}: this package's {th}x{tw} tile was planned for {planned['image'][0]}x"
                       f"{planned['image'][1]} images; {what} cost {cost:.1f}x its pixels; "
                       f"export a package with --image-size {ph}x{pw} for such images", file=sys.stderr)
        if result.scale.notice or result.scale.status == FOV_UNMEASURABLE:
            tqdm.write(f"notice: {path}: scale: {result.scale.describe()}", file=sys.stderr)
        if result.fov_source == "estimated" and result.fov_fraction < 0.1:
            tqdm.write(f"warning: {path}: the estimated field of view covers only {result.fov_fraction:.0%} of "
                       "the image; check the photo or pass --mask", file=sys.stderr)
        if args.verbose:
            tqdm.write(f"{path}: {result.tiles} tiles, " + ", ".join(
                f"{k} {v:.1f}" for k, v in rep.timings_ms.items()) + f"; scale: {result.scale.describe()}",
                file=sys.stderr)
        reports.append(rep)

    done = [r for r in reports if r.ok]
    total_s = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "tool": "edge-run",
        "machine": platform.machine(),
        "arch": host_arch(),
        "python": platform.python_version(),
        "package": {"path": str(pkg.path.resolve()), "model": pkg.model_name, "arch": pkg.arch,
                    "target": pkg.info.target.preset},
        "backend": {"name": choice.backend.name, "requested": choice.requested, "fallback": choice.fallback,
                    "threads": threads, "cores": cores, "device": choice.backend.device},
        "options": options,
        "scale": {"native_scale": bool(args.native_scale),
                  "training_fov_px": pkg.info.preprocess.fov_diameter_px if pkg.info.preprocess else None,
                  "resampled": sum(1 for r in done if r.scale and r.scale["status"] == RESAMPLED)},
        "out": str(out.resolve()),
        "ok": len(done),
        "failed": len(reports) - len(done),
        "total_s": total_s,
        "setup_s": setup_s,
        "per_image_s": (sum(r.timings_ms["image_ms"] for r in done) / len(done) / 1e3) if done else None,
        "inference_per_image_s": (sum(r.timings_ms["inference_ms"] for r in done) / len(done) / 1e3)
        if done else None,
        "tiles_per_image": (sum(r.tiles or 0 for r in done) / len(done)) if done else None,
        "metrics": ({**pooled.to_dict(), "images": len([r for r in done if r.metrics])} if pooled else None),
        "images": [r.__dict__ for r in reports],
        "exit_code": first_code,
    }
    if args.json:
        write_atomic(args.json, (json.dumps(summary, indent=2) + "\n").encode())
    return summary, first_code


def keep_torch_out() -> None:
    """tvm_ffi imports torch at ``import tvm`` whenever it is installed (a host with the export toolchain): 250 MB
    of RSS and ~1.5 s of start-up that edge-run never uses (a board has no torch). The console script marks it
    unimportable for its own process; library callers (edge-bench, tests) are left alone."""
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        summary, code = run(args)
        print(format_summary(summary))
        return code

    return run_cli(body, args.verbose)


def console_main() -> int:
    """The ``edge-run`` entry point: :func:`main` in a process of its own, without torch."""
    keep_torch_out()
    return main()


if __name__ == "__main__":
    sys.exit(console_main())
