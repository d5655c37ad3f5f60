"""The model zoo: registered PyTorch architectures for retinal vessel segmentation."""
from models.registry import ModelSpec, create_model, get_spec, list_models, register_model

# Importing the architecture modules registers them.
from models import m2unet as _m2unet  # noqa: E402,F401
from models import unet as _unet  # noqa: E402,F401  (unet, dunet)
from models import erfnet as _erfnet  # noqa: E402,F401
from models import sepfe as _sepfe  # noqa: E402,F401
from models import hybridnetseg as _hybridnetseg  # noqa: E402,F401
from models import iternet as _iternet  # noqa: E402,F401
from models import attention_unets as _attention_unets  # noqa: E402,F401  (cbam_unet, cmp_unet)

__all__ = ["ModelSpec", "create_model", "get_spec", "list_models", "register_model"]
