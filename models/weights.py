"""Loading state dicts into zoo models, with errors that name the keys that do not fit."""
from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import torch

from edge.errors import EdgeError
from edge.package import is_positive_number

SHIPPED = Path(__file__).resolve().parent / "weights"  # default weights shipped with the project (MODEL_CARD.md)


def shipped_weights(model: str) -> Path | None:
    """The default weights shipped for ``model`` (``models/weights/<model>.pth``), None when there are none."""
    p = SHIPPED / f"{model}.pth"
    return p if p.is_file() else None


def sidecar_scale(weights: str | Path) -> float | None:
    """The training scale a checkpoint's JSON sidecar records (``m2unet.json`` beside ``m2unet.pth``:
    ``"scale": {"fov_diameter_px": 960}``, the FOV diameter in pixels of the images it was trained at); None when
    there is no sidecar or it records no scale. A sidecar that says something unusable is refused."""
    side = Path(weights).with_suffix(".json")
    if not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise EdgeError(f"the weights' sidecar {side} is not readable JSON ({exc}); fix or remove it, or pass "
                        "--fov-diameter PX") from exc
    scale = meta.get("scale") if isinstance(meta, dict) else None
    if scale is None:
        return None
    if not isinstance(scale, dict):
        raise EdgeError(f"the weights' sidecar {side} has scale {json.dumps(scale)[:40]}, not "
                        '{"fov_diameter_px": PX}; fix it or pass --fov-diameter PX')
    value = scale.get("fov_diameter_px")
    if value is None:
        return None
    if not is_positive_number(value):
        raise EdgeError(f"the weights' sidecar {side} has scale.fov_diameter_px {json.dumps(value)[:40]}, not a "
                        "positive number of pixels; fix it or pass --fov-diameter PX")
    return float(value)


def unpickled_code(exc: BaseException) -> str | None:
    """What torch's weights-only unpickler refused to import (``posix.system``), or None when the error says the
    file is no pickle at all rather than a pickle naming code."""
    m = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return m.group(1) if m else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` state dict (a bare one, or under ``state_dict``/``model``)."""
    path = Path(path)
    if path.is_dir():
        raise EdgeError(f"weights {path} is a folder, not a state dict file; pass the .pth/.pt file inside it "
                        "with --weights")
    if not path.is_file():
        raise EdgeError(f"weights file not found: {path}; pass an existing .pth/.pt state dict with --weights")
    try:
        # weights_only: the unpickler builds tensors and plain containers only, never runs code from the file
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        code = unpickled_code(exc)
        if code is None:  # not a pickle at all (e.g. "invalid load key", "Unsupported operand")
            raise EdgeError(f"cannot read weights {path} (UnpicklingError: not a PyTorch state dict); pass one "
                            "saved with torch.save(model.state_dict(), path)") from exc
        raise EdgeError(f"refused to load weights {path}: it holds Python objects other than tensors ({code}), "
                        "which could run code when unpickled (weights-only loading); pass a plain state dict "
                        "saved with torch.save(model.state_dict(), path)") from exc
    except Exception as exc:  # torch raises many types for corrupt or non-pickle files
        raise EdgeError(f"cannot read weights {path} ({type(exc).__name__}: not a PyTorch state dict); "
                        "pass one saved with torch.save(model.state_dict(), path)") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EdgeError(f"{path} is not a state dict of tensors; save it with torch.save(model.state_dict(), path)")
    if obj and all(k.startswith("module.") for k in obj):
        print(f"note: stripping the DataParallel 'module.' prefix from the keys of {path.name}", file=sys.stderr)
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a state dict strictly; a mismatch names the missing, unexpected and mis-shaped keys."""
    sd = read_state_dict(path)
    own = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (checkpoints from PyTorch < 0.4.1 lack it).
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shaped = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shaped:
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {few(unexpected)}")
        if shaped:
            parts.append(f"shape mismatch: {few([f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}' for k in shaped])}")
        raise EdgeError(f"weights {Path(path).name} do not fit model '{name}': {'; '.join(parts)}; "
                        "pass a checkpoint trained for this model")
    model.load_state_dict(sd, strict=True)
