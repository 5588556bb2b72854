"""Architectures that weights-only files need: such files hold arrays, not the network, so (as
Keras' ``keras.applications.VGG16`` does) the network is built from this table and the file's
arrays are matched to it by layer name (or, for the 2016 file, by order).
"""

# (block, number of 3x3 'same' ReLU convolutions, output channels); each block ends in a 2x2 pool.
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
VGG16_DENSE = (("fc1", 4096, "relu"), ("fc2", 4096, "relu"), ("predictions", 1000, "softmax"))
VGG16_TOP_INPUT = (224, 224, 3)  # the classifier fixes the input size: block5_pool is 7x7x512


def vgg16_layers(include_top: bool):
    """The VGG16 layer table: a list of dicts (name, kind, activation, kernel_shape, ...).

    Kernel shapes are in the engine's layout: conv (3, 3, c_in, c_out), dense (n_in, n_out).
    """
    table = []
    c_in = 3
    for block, n_conv, c_out in VGG16_BLOCKS:
        for i in range(1, n_conv + 1):
            table.append(
                dict(
                    name=f"block{block}_conv{i}",
                    kind="conv2d",
                    activation="relu",
                    padding="same",
                    kernel_shape=(3, 3, c_in, c_out),
                )
            )
            c_in = c_out
        table.append(dict(name=f"block{block}_pool", kind="maxpool2d", pool_size=(2, 2)))
    if include_top:
        table.append(dict(name="flatten", kind="flatten"))
        n_in = 7 * 7 * c_in
        for name, n_out, activation in VGG16_DENSE:
            table.append(
                dict(name=name, kind="dense", activation=activation, kernel_shape=(n_in, n_out))
            )
            n_in = n_out
    return table
