"""Each paper's training recipe as data: the defaults of `edge-train MODEL` (every field can be overridden)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Recipe:
    """``patch`` None: whole images (cropped to the model's divisor); else random square patches of that side,
    ``patches_per_image`` of them per image and epoch. ``patience`` 0: no early stopping."""

    loss: str
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 4
    epochs: int = 300
    patch: int | None = None
    patches_per_image: int = 1
    patience: int = 0
    source: str = ""

    def to_meta(self) -> dict:
        return asdict(self)


_M2UNET = Recipe(
    loss="jbce", optimizer="adamw", lr=1e-3, weight_decay=0.01, batch_size=4, epochs=300,
    source="seeds/002 Sec. 4.1: AdamW lr 1e-3 (weight decay: PyTorch default), BCE + 0.3 (1 - soft Jaccard), "
           "whole images, batch 4 (DRIVE), 300 epochs, best validation Dice")

RECIPES: dict[str, Recipe] = {
    "m2unet": _M2UNET,
    # The M2U-Net paper trained its baselines with its own setup (U-Net at batch 2).
    "erfnet": replace(_M2UNET, source="seeds/002 Sec. 4.1 (ERFNet baseline trained with M2U-Net's setup)"),
    "unet": replace(_M2UNET, batch_size=2, source="seeds/002 Sec. 4.1 (U-Net baseline: M2U-Net's setup, batch 2)"),
    "sepfe": Recipe(
        loss="dice_ce", optimizer="adam", lr=2e-4, weight_decay=0.0, batch_size=24, epochs=40, patch=48,
        patches_per_image=4000,
        source="seeds/000 Secs. 3.1-3.3, 4: 48x48 random patches (4000 per image), Adam lr 2e-4, batch 24, "
               "< 40 epochs, 0.2 dice + 0.8 cross-entropy"),
    "hybridnetseg": Recipe(
        loss="mixed", optimizer="adamw", lr=1e-3, weight_decay=5e-4, batch_size=2, epochs=500, patience=30,
        source="seeds/001 Secs. 3.2-3.3: AdamW lr 1e-3 wd 5e-4, batch 2, whole images, mixed multi-scale "
               "loss w 0.5 on the 4 decoder stages, at most 500 epochs, early stopping patience 30"),
    "iternet": Recipe(
        loss="bce_sum", optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=8, epochs=100, patch=128,
        patches_per_image=32,
        source="seeds/003 Secs. 3, 4.2: 128x128 patches, summed per-output BCE (weights 1); optimizer, "
               "batch, epochs and patches per image are not given there: Adam lr 1e-3, batch 8, 100 epochs, "
               "32 patches per image (our choice)"),
}
for _name in ("dunet", "cbam_unet", "cmp_unet"):
    RECIPES[_name] = replace(_M2UNET, loss="dice", batch_size=2,
                             source="seeds/004 slides: Dice loss, augmentation; optimizer not given: "
                                    "M2U-Net's AdamW lr 1e-3, batch 2 (our choice)")

FALLBACK = replace(_M2UNET, source="no recipe for this model: M2U-Net's (seeds/002 Sec. 4.1)")


def recipe_for(model: str) -> Recipe:
    return RECIPES.get(model, FALLBACK)
