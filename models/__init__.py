"""The model zoo: registered PyTorch architectures for retinal vessel segmentation."""
from models.registry import ModelSpec, create_model, get_spec, list_models, register_model

# Importing the architecture modules registers them.
from models import m2unet as _m2unet  # noqa: E402,F401

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
