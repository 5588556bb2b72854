"""Bounds checked before a command does any work: the memory it will need, estimated from its
option values and the network's shapes, against the memory this machine has available; and the
shrinking of very large photos to ``--max-side``.

A refusal is one line naming the estimate and the option to change. The estimates count float32
activations (input and every layer up to the deepest one used) times the copies alive at once:
``FORWARD_COPIES`` for a forward pass, ``BACKWARD_COPIES`` when gradients flow back (activations,
their gradients, pooling indices and the convolutions' workspaces), plus the pictures written.
They are deliberately generous: a refusal should only come where the work could not finish.
"""

import numpy as np

from engine.errors import ConvscopeError
from engine.resources import available_memory

FLOAT32 = 4
FORWARD_COPIES = 2
BACKWARD_COPIES = 4
GIB = 2 ** 30
DEFAULT_MAX_SIDE = 2048  # dream, report: a larger photo is shrunk (saying so) unless --max-side 0
# dream's default --max-loss: on the real VGG16 block1-2 weights, a block2 dream of a photo
# (4 octaves x 20 steps) ends at a loss of 8.6e7 with 14% of the pixels saturated; a guard of 1e6
# ends each octave once the colours start to burn (4% saturated, a mean change of 14 levels).
DEFAULT_MAX_LOSS = 1e6


def network_bytes(model, hw, batch, deepest, backward=True) -> int:
    """Bytes of activations for ``batch`` images of ``hw`` (H, W) up to layer ``deepest``."""
    shapes = model.output_shapes(hw, upto=model.layer_index(deepest))
    values = int(hw[0]) * int(hw[1]) * model.input_shape[2] + sum(int(np.prod(s)) for s in shapes)
    return FLOAT32 * int(batch) * values * (BACKWARD_COPIES if backward else FORWARD_COPIES)


def dream_bytes(model, layers, hw, tile) -> int:
    """A dream of an (H, W) photo: gradients in ``tile`` windows, and about 8 float32 copies of
    the image (octave, detail, shrunk original, gradient, ...)."""
    window = (min(tile, hw[0]), min(tile, hw[1]))
    return network_bytes(model, window, 1, max(layers, key=model.layer_index)) + 8 * FLOAT32 * hw[0] * hw[1] * 3


def check_memory(needed: int, what: str, change: str) -> None:
    """A one-line error when ``needed`` bytes exceed the memory available now."""
    available = available_memory()
    if needed > available:
        raise ConvscopeError(
            f"{what} needs about {needed / GIB:.1f} GiB of memory, more than the {available / GIB:.1f} GiB "
            f"available; {change}"
        )


def check_side(value: int, option: str, most: int = 1 << 16) -> int:
    """A pixel count option (1 to ``most``) or a one-line error."""
    if not 1 <= value <= most:
        raise ConvscopeError(f"{option} {value}: give 1 to {most} pixels")
    return value


def shrink_to(photo: np.ndarray, max_side: int, echo=None) -> np.ndarray:
    """The photo with its longer side at most ``max_side`` (0: unchanged), aspect kept; ``echo``
    (a print function) is told when it was shrunk."""
    from engine.images import resize_image

    height, width = photo.shape[:2]
    if max_side <= 0 or max(height, width) <= max_side:
        return photo
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if echo is not None:
        echo(f"note: the photo is {width}x{height}; working at {size[0]}x{size[1]} "
             f"(--max-side {max_side}; 0 keeps the full size)")
    return resize_image(photo, size)
