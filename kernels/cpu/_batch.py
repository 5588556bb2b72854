"""Work ranges over a batch that keep every image's arithmetic independent of its batch.

BLAS does not compute a row of a product the same way at every matrix height: OpenBLAS's
kernels take rows in blocks (16 for its AVX2 SGEMM) and run the leftover rows, and the rows each
thread gets, through narrower kernels whose sums round differently (measured in
benchmarks/README.md, "Batch invariance"). So a row's bits depend on the height of the product
and on where the row sits in it. The CPU kernels therefore never let an image's rows share a
BLAS call whose shape depends on the batch: a product covers either part of one image, cut the
same way in every image, or whole images, each image its own product of the same shape
(``segmented_matmul``). Gathers, transforms and epilogues are element-wise in fixed order, so
they may run over any range.
"""

import numpy as np


def image_runs(images, per_image, parts, groups):
    """(runs, segment): runs ``(start, size)`` over ``images * per_image`` units, in order.

    ``parts`` > 1: every image cut into ``parts`` near-equal runs, the same cut in every image;
    each run is one segment (``segment`` None). Otherwise whole images, gathered into at most
    ``groups`` near-equal runs, each image a segment of ``per_image`` units.
    """
    if parts > 1:
        size = -(-per_image // parts)
        runs = [(i * per_image + s, min(size, per_image - s))
                for i in range(images) for s in range(0, per_image, size)]
        return runs, None
    groups = max(1, min(groups, images))
    take = -(-images // groups)
    return [(i * per_image, min(take, images - i) * per_image) for i in range(0, images, take)], per_image


def segmented_matmul(a, b, out, segment, columns=False):
    """out = a @ b over the last two axes, one BLAS product per ``segment`` rows of a (None: all).

    a (..., rows, k), b (..., k, cols), out (..., rows, cols). With ``columns`` the segments are
    of b's (and out's) columns instead. Each segment is a product of the same shape, so its values
    do not depend on the other segments. Views only: an operand that cannot be split without a
    copy raises (out must be written in place).
    """
    axis = -1 if columns else -2
    length = out.shape[axis]
    if segment is None or segment == length:
        np.matmul(a, b, out=out)
        return
    g = length // segment
    if g * segment != length:
        raise ValueError(f"{length} rows/columns are not whole segments of {segment}")

    def split(x):  # (..., r, c) -> (..., g, r/g, c) rows, or (..., g, r, c/g) columns
        if columns:
            return np.moveaxis(np.reshape(x, (*x.shape[:-1], g, segment), copy=False), -2, -3)
        return np.reshape(x, (*x.shape[:-2], g, segment, x.shape[-1]), copy=False)

    if columns:
        np.matmul(a[..., None, :, :], split(b), out=split(out))
    else:
        np.matmul(split(a), b[..., None, :, :], out=split(out))
