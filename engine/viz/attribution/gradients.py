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

from engine.viz.attribution.base import Attribution, channel_map, gathered, prepare


def input_gradient_attribution(model, x, classes=None, relu="standard", batch=16, progress=None, method=None):
    """d logit[class] / d x for each image (the class given, or its top class)."""
    x, wanted, batch = prepare(model, x, classes, batch)
    g = gathered(model, x, wanted, batch, progress, relu=relu)
    name = method or ("vanilla" if relu == "standard" else relu)
    return Attribution(name, g.gradients, channel_map(g.gradients), False, g.classes, g.scores, g.probabilities)


def vanilla_gradient(model, x, classes=None, batch=16, progress=None) -> Attribution:
    """The gradient of each image's class logit with respect to its pixels (Simonyan et al.)."""
    return input_gradient_attribution(model, x, classes, "standard", batch, progress, "vanilla")


def guided_backprop(model, x, classes=None, batch=16, progress=None) -> Attribution:
    """Guided backpropagation of each image's class logit to its pixels (Springenberg et al.)."""
    return input_gradient_attribution(model, x, classes, "guided", batch, progress, "guided")
