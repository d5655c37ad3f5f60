"""vessel-edge device runtime: load a package, segment fundus images by overlapping tiles.

Imports nothing from models/, export/ or benchmarks/, and never torch or onnx.
"""
from edge.errors import EdgeError, InputError, PackageError, look_up_option

__all__ = ["EdgeError", "InputError", "PackageError", "look_up_option"]
