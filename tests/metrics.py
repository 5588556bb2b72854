"""Error measures shared by the tests (no framework imports)."""

import numpy as np


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


# The convolution arithmetic (``engine.load(..., conv=...)``) of the fixtures that record the
# engine's own float32 path: the saliency references follow the ReLU / max-pool near-tie decisions
# of the engine's im2col + GEMM pass, and the dream, class-model and FGSM references are float64
# trajectories that the float32 im2col + GEMM run was checked to stay within 1e-3 of. On the
# synthetic VGG16 a rounding change of 1e-7 moves a near-tie and the gradient by up to 0.3%, and
# ascent steps carry that forward: run with the default Winograd arithmetic (per layer 1e-7 to
# 3.5e-6 from float64, as correct a convolution) those tests measure 4e-3 to 4e-2. Winograd itself
# is held to the reference per layer and through the whole network (test_winograd,
# test_model_reference, test_model's auto-vs-gemm check).
FIXTURE_CONV = "gemm"
