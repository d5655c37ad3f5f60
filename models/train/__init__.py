"""Training and evaluation: dataset loaders, a synthetic fundus generator, augmentations, losses, metrics,
`edge-train` (:mod:`models.train.trainer`) and `edge-eval` (:mod:`models.train.evaluate`).

Torch is imported only by the modules that need it (trainer, losses, evaluate); loaders, the generator,
augmentations and metrics are numpy/OpenCV.
"""
