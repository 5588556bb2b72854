"""Attributions: which input pixels a class score depends on, one small module per method.

    from engine.viz.attribution import attribute
    result = attribute(model, x, "integrated", classes=281, steps=50, batch=16)
    result.attributions    # (N, 224, 224, 3) float32, raw
    result.maps            # (N, 224, 224) float32 (signed for integrated gradients)
    result.completeness_error   # integrated gradients only

``x`` is a caffe-preprocessed NHWC batch; every method differentiates the class logit (the
pre-softmax score) through the one class-gradient path (``base.class_gradients``), its passes
in batches (``base.gradient_batches``). The family's other members sit beside them: Grad-CAM
(``gradcam`` on ``cam``, which returns a ``CamResult``) and occlusion (``occlusion``, no gradient).
"""

from engine.errors import ConvscopeError
from engine.viz.attribution.base import Attribution
from engine.viz.attribution.gradients import guided_backprop, vanilla_gradient
from engine.viz.attribution.guided_gradcam import guided_grad_cam
from engine.viz.attribution.integrated import integrated_gradients
from engine.viz.attribution.smoothgrad import smoothgrad

METHODS = {
    "vanilla": vanilla_gradient,
    "guided": guided_backprop,
    "smoothgrad": smoothgrad,
    "integrated": integrated_gradients,
    "guided-gradcam": guided_grad_cam,
}


def attribute(model, x, method: str, classes=None, **options) -> Attribution:
    """Run one method by name (``METHODS``) with its own options (samples, steps, layer, ...)."""
    if method not in METHODS:
        raise ConvscopeError(f"unknown attribution method {method!r}: use one of {', '.join(METHODS)}")
    return METHODS[method](model, x, classes=classes, **options)


__all__ = [
    "METHODS", "Attribution", "attribute", "guided_backprop", "guided_grad_cam", "integrated_gradients",
    "smoothgrad", "vanilla_gradient",
]
