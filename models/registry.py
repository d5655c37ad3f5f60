"""Model registry: frozen specs plus factory functions, looked up by name (timm style)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError, look_up_option


@dataclass(frozen=True)
class ModelSpec:
    """Everything a deployer needs to know about a model without building it.

    Input scaling: pixel values (0..255) become ``(x / 255 - mean) / std`` per channel.
    ``output`` says what the network returns; every model here returns ``logits``
    (probability = sigmoid), never probabilities.
    """

    name: str
    paper: str
    in_channels: int = 3
    out_channels: int = 1
    divisor: int = 16
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    output: str = "logits"
    default_tile: tuple[int, int] = (544, 544)
    threshold: float = 0.5
    overlap: int = 64
    params_expected: int | None = None
    gmacs_expected: float | None = None
    gmacs_at: tuple[int, int] | None = None
    description: str = ""
    extras: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def check_size(self, height: int, width: int) -> None:
        """Raise an :class:`EdgeError` naming the nearest valid size when a side is not a multiple of the divisor."""
        d = self.divisor
        if height % d or width % d or height <= 0 or width <= 0:
            up_h, up_w = -(-max(height, 1) // d) * d, -(-max(width, 1) // d) * d
            down_h, down_w = max(height // d * d, d), max(width // d * d, d)
            alt = f" or crop to {down_h}x{down_w}" if (down_h, down_w) != (up_h, up_w) else ""
            raise EdgeError(
                f"{self.name} needs input sides that are multiples of {d}, got {height}x{width}; "
                f"pad to {up_h}x{up_w} (the nearest valid size){alt}"
            )

    def to_meta(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "paper": self.paper,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "divisor": self.divisor,
            "mean": list(self.mean),
            "std": list(self.std),
            "output": self.output,
            "default_tile": list(self.default_tile),
            "threshold": self.threshold,
            "overlap": self.overlap,
            "params_expected": self.params_expected,
        }


_FACTORIES: dict[str, Callable[..., Any]] = {}
_SPECS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``fn(**kw) -> nn.Module`` under ``spec.name``."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if spec.name in _SPECS:
            raise RuntimeError(f"model '{spec.name}' registered twice")
        _FACTORIES[spec.name] = fn
        _SPECS[spec.name] = spec
        return fn

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _SPECS if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> ModelSpec:
    return _SPECS[look_up_option(name, list_models(), "model")]


def create_model(name: str, weights: str | Path | None = None, **kw: Any):
    """Build a registered model in eval mode, optionally loading a state dict strictly."""
    spec = get_spec(name)
    model = _FACTORIES[spec.name](**kw)
    model.spec = spec
    if weights is not None:
        from models.weights import load_weights

        load_weights(model, weights)
    return model.eval()
