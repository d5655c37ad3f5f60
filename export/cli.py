"""`edge-export`: the command-line face of export.pipeline."""
from __future__ import annotations

import argparse
import sys

from edge.errors import EdgeError, run_cli

# The tile budget of --image-size: 2.5 Mpx keeps edge-run on a 2336x3504 HRF photograph under 600 MB peak RSS
# (1280x1872 tiles: 511 MiB measured on x86 with --overlay --float, 555 MiB in the emulated arm64 userland).
DEFAULT_MAX_TILE_MPX = 2.5


def plan_for_image(model: str, image_size: str, max_tile_mpx: float) -> tuple[tuple[int, int], dict]:
    """``--image-size``: the compiled tile for that image size (edge.tiling.plan_tile, the runtime's own tile
    layout) and the plan recorded in meta.json."""
    from edge.errors import parse_size
    from edge.tiling import plan_tile

    if model.lower().endswith(".onnx"):
        raise EdgeError("--image-size needs a registered model (its overlap and divisor come from its spec); for "
                        "an ONNX file pass --input-size HxW")
    if not max_tile_mpx > 0:
        raise EdgeError(f"--max-tile-mpx {max_tile_mpx} must be above 0")
    from models import get_spec

    spec = get_spec(model)
    image = parse_size(image_size, "--image-size")
    plan = plan_tile(image, spec.overlap, spec.divisor, int(max_tile_mpx * 1e6))
    return plan.tile, {"image": list(plan.image), "tiles": plan.tiles, "cost_factor": round(plan.cost_factor, 4),
                       "max_tile_pixels": int(max_tile_mpx * 1e6), "overlap": plan.overlap}


def parse_fov_diameter(text: str | None) -> float | None:
    """``--fov-diameter PX``: a positive, finite number (None when not given)."""
    if text is None:
        return None
    from export.pipeline import check_fov_diameter

    try:
        value = float(text)
    except ValueError:
        raise EdgeError(f"--fov-diameter {text!r} is not a number; pass the FOV diameter in pixels of the images the "
                        "weights were trained at, e.g. --fov-diameter 540 for DRIVE") from None
    return check_fov_diameter(value)


def build_parser() -> argparse.ArgumentParser:
    from export.targets import PRESETS

    presets = "\n".join(f"  {p.name:<14} {p.description}" + (f" (alias: {', '.join(p.aliases)})" if p.aliases else "")
                        for p in PRESETS.values())
    ap = argparse.ArgumentParser(
        prog="edge-export", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="PyTorch or ONNX model -> verified ONNX -> onnxsim -> TVM-compiled package for a device.",
        epilog=f"target presets:\n{presets}\n  or a raw TVM target JSON, e.g. "
               "'{\"kind\": \"llvm\", \"mtriple\": \"aarch64-linux-gnu\", \"mcpu\": \"cortex-a72\"}'\n\n"
               "example: edge-export m2unet --target arm64 --weights M2UNetDRIVE.pth --out pkg-arm64")
    ap.add_argument("model", help="a registered model name (see --list-models) or a path to an .onnx file")
    ap.add_argument("--target", default="x86_64", help="target preset or raw TVM target JSON (default: x86_64)")
    ap.add_argument("--weights", help="state dict (.pth/.pt); default: the project's shipped weights for the model")
    ap.add_argument("--input-size", help="compiled input (= tile) size HxW or S; default: the model spec's tile")
    ap.add_argument("--image-size", metavar="HxW",
                    help="the camera's image size (e.g. 2336x3504 for HRF): compile the tile that segments such "
                         "an image for the fewest computed pixels with the model's overlap (instead of --input-size)")
    ap.add_argument("--max-tile-mpx", type=float, default=DEFAULT_MAX_TILE_MPX, metavar="MPX",
                    help="with --image-size: largest tile in megapixels (M2U-Net needs ~100 MB of working memory per "
                         f"megapixel of tile; default: {DEFAULT_MAX_TILE_MPX})")
    ap.add_argument("--fov-diameter", metavar="PX", default=None,
                    help="the field-of-view diameter in pixels of the images the weights were trained at, recorded in "
                         "meta.json (preprocess.fov_diameter_px): edge-run resamples each photograph by its FOV to it. "
                         "Default: the weights' sidecar JSON (<weights>.json, \"scale\": {\"fov_diameter_px\": PX}), "
                         "else unknown (edge-run works at native scale). The only way for an ONNX file. The authors' "
                         "checkpoints, approximately: 540 (DRIVE), 940 (CHASE_DB1), 3300 (HRF)")
    ap.add_argument("--out", help="package directory (default: packages/<model>-<target>-<HxW>)")
    ap.add_argument("--force", action="store_true", help="replace an existing package directory")
    ap.add_argument("--cuda-arch", help="CUDA architecture for --target cuda, e.g. sm_86")
    ap.add_argument("--tune", type=int, default=0, metavar="N",
                    help="MetaSchedule trials to tune before compiling (written to --tuning-db)")
    ap.add_argument("--tuning-db", help="MetaSchedule database directory to apply (and to tune into with --tune); "
                                        "default: the database shipped for the target class, model and size")
    ap.add_argument("--rpc-tracker", metavar="HOST:PORT",
                    help="with --tune for a cross target: the TVM RPC tracker the board's server registered with")
    ap.add_argument("--rpc-key", metavar="KEY", help="with --rpc-tracker: the board's device key, e.g. rk3399")
    ap.add_argument("--quantize", choices=["int8"], default=None,
                    help="int8: an ONNX-only package of ONNX Runtime's post-training int8 model (QDQ, mixed precision "
                         "where a block of the network needs fp32), calibrated on the runtime's own tiles and refused "
                         "when its vessel masks differ from fp32's beyond --int8-max-dice-loss on held-out photographs")
    ap.add_argument("--calibration-images", metavar="DIR",
                    help="with --quantize: a folder of your camera's photographs (at least 3; every third, by name, "
                         "is held out for the check); default: the package's synthetic photographs")
    ap.add_argument("--int8-max-dice-loss", type=float, default=None, metavar="D",
                    help="with --quantize: refuse the int8 package when 1 - Dice (int8 vs fp32 masks, worst held-out "
                         "photograph) exceeds D (default: 0.005)")
    ap.add_argument("--list-models", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--list-models"]:
        from models import list_models

        print("\n".join(list_models()))
        return 0
    args = build_parser().parse_args(argv)

    def body() -> int:
        from edge.errors import parse_size
        from export.pipeline import export_model, fmt_summary

        fov_diameter = parse_fov_diameter(args.fov_diameter)  # refused before any work
        input_size = parse_size(args.input_size, "--input-size") if args.input_size else None
        plan = None
        if args.image_size:
            if input_size:
                raise EdgeError("--input-size and --image-size both set the tile; pass one of them")
            input_size, plan = plan_for_image(args.model, args.image_size, args.max_tile_mpx)
            print(f"[edge-export] tile {input_size[0]}x{input_size[1]} for {args.image_size} images: "
                  f"{plan['tiles']} tiles, {plan['cost_factor']:.3f}x the image's pixels "
                  f"(overlap {plan['overlap']} px, tiles up to {args.max_tile_mpx:g} Mpx)", file=sys.stderr)
        result = export_model(args.model, target=args.target, weights=args.weights, input_size=input_size,
                              out=args.out, cuda_arch=args.cuda_arch, tuning_db=args.tuning_db,
                              tune_trials=args.tune, force=args.force, rpc_tracker=args.rpc_tracker,
                              rpc_key=args.rpc_key, tile_plan=plan, fov_diameter=fov_diameter,
                              quantize=args.quantize, calibration_images=args.calibration_images,
                              int8_max_dice_loss=args.int8_max_dice_loss)
        print(fmt_summary(result))
        return 0

    return run_cli(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
