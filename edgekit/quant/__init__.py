"""Static INT8 post-training quantization: one recipe (QuantRecipe), edgekit's own calibrators, and
the PT2E glue the tflite and executorch targets share. Light to import: torch and the target
toolchains are imported by the functions that need them."""
from .calibrators import CALIBRATORS, TensorStats, TensorStatsCollector, qparams
from .recipe import QuantRecipe, check

__all__ = ["CALIBRATORS", "QuantRecipe", "TensorStats", "TensorStatsCollector", "check", "qparams"]
