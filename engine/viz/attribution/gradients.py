"""Vanilla gradients (Simonyan et al., 2014) and guided backpropagation (Springenberg et al., 2015).

Both differentiate each image's class logit (the pre-softmax score) with respect to the input, in
one forward and one backward pass per ``batch`` images; they differ only in the ReLU backward:
'standard' for the gradient itself, 'guided' for guided backprop (a gradient passes a ReLU only
where the forward output is > 0 and the incoming gradient is > 0).

    result = vanilla_gradient(model, x)                 # each image's top class
    result = guided_backprop(model, x, classes=281)     # one class for every image
    result.attributions                                 # (N, 224, 224, 3) raw gradients
    result.maps                                         # (N, 224, 224) max |gradient| over channels
"""

import numpy as np

from engine.viz.attribution.base import Attribution, channel_map, gradient_batches, n_classes, prepare


def input_gradient_attribution(model, x, classes=None, relu="standard", batch=16, progress=None, method=None):
    """d logit[class] / d x for each image (the class given, or its top class)."""
    x, wanted, batch = prepare(model, x, classes, batch)
    n = x.shape[0]
    gradients = np.empty(x.shape, dtype=np.float32)
    found = np.empty(n, dtype=np.int64)
    scores = np.empty(n, dtype=np.float64)
    probabilities = np.empty((n, n_classes(model)), dtype=np.float32)
    for start, stop, part in gradient_batches(model, n, lambda a, b: x[a:b], wanted, relu, batch, progress=progress):
        gradients[start:stop], found[start:stop] = part.gradients, part.classes
        scores[start:stop], probabilities[start:stop] = part.scores, part.probabilities
    name = method or ("vanilla" if relu == "standard" else relu)
    return Attribution(name, gradients, channel_map(gradients), False, found, scores, probabilities)


def vanilla_gradient(model, x, classes=None, batch=16, progress=None) -> Attribution:
    """The gradient of each image's class logit with respect to its pixels (Simonyan et al.)."""
    return input_gradient_attribution(model, x, classes, "standard", batch, progress, "vanilla")


def guided_backprop(model, x, classes=None, batch=16, progress=None) -> Attribution:
    """Guided backpropagation of each image's class logit to its pixels (Springenberg et al.)."""
    return input_gradient_attribution(model, x, classes, "guided", batch, progress, "guided")
