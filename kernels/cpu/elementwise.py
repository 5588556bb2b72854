"""The optimisation loops' ops on the CPU: the NumPy versions of ``kernels/reference.py``.

``fill``, ``axpy``, ``masked_axpy``, ``sample_scale``, the scores ``channel_sum``, ``square_sum``
and ``variation_sum``, and the image moves ``roll``, ``resize_bilinear``, ``copy_window`` and
``add_window`` (``kernels.LOOP_OPS``): same names and signatures on every backend.

They are whole-array NumPy expressions already (the resize is two small float64 matrix products),
so the CPU takes the reference's code rather than a second copy of it in Numba.
"""

from kernels.reference import (
    add_window,
    axpy,
    channel_sum,
    copy_window,
    fill,
    masked_axpy,
    resize_bilinear,
    roll,
    sample_scale,
    square_sum,
    variation_sum,
)

__all__ = [
    "fill",
    "axpy",
    "masked_axpy",
    "sample_scale",
    "channel_sum",
    "square_sum",
    "variation_sum",
    "roll",
    "resize_bilinear",
    "copy_window",
    "add_window",
]
