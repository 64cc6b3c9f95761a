"""See what a small ZFNet learned
================================

Trains a ZFNet-like network (Zeiler and Fergus 2013, scaled down to 32x32
digits: a 7x7 stride-2 first layer, overlapping 3x3 stride-2 max pools) on
the bundled digits, then, as in the paper's figure 2, finds for a few units
of layers 1 and 2 the test images that excite each most and projects each of
those activations alone back to the pixels through the deconvnet built from
the network's own graph (unpool with the image's switches, ReLU, transposed
convolution), beside the image patch under the unit's receptive field.

    python examples/zfnet_visualize.py [OUT_DIR]     # zfnet_layer1.png, zfnet_layer2.png

The same pictures from the command line, for a run of `nnspec train`:

    nnspec visualize SPEC --checkpoint runs/NAME --layer layer2 --units 4 --top 6 -o l2.png
"""
import sys
from pathlib import Path

import nnspec
from nnspec import viz
from nnspec.data import load
from nnspec.viz import draw

SPEC = """
network zfnet_small(classes = 10) {
    input x: [1, 32, 32]
    layer1 = x -> conv2d(16, 7, stride=2, pad=1) -> relu
               -> maxpool(3, stride=2, pad=1)                       # [16, 7, 7]
    layer2 = layer1 -> conv2d(32, 5, pad=2) -> relu
                    -> maxpool(3, stride=2, pad=1)                  # [32, 4, 4]
    layer3 = layer2 -> conv2d(32, 3, pad=1) -> relu                 # [32, 4, 4]
    output logits = layer3 -> flatten -> dropout(0.5) -> dense(classes)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.02, momentum = 0.9)
    batch = 32
    epochs = 6
    data = digits(size = 32)
}
"""

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
net = nnspec.compile(SPEC, seed=0)
result = net.fit(progress=True)
print(f"test accuracy {result['test_accuracy']:.2%}")

x = load("digits(size = 32)", net)[1]["x"]          # the test split, as `nnspec eval` scores it
for layer in ("layer1", "layer2"):
    top = viz.strongest(net, layer, x, units=4, top=6)
    print(top.summary())
    units = ", ".join(map(str, top.units))
    fig = draw.deconv_figure(top, x, f"zfnet_small: {layer}, units {units}\neach unit's 6 "
                                     f"strongest activations over {len(x)} test digits, "
                                     f"projected by the deconvnet, beside their patches")
    draw.save(fig, out / f"zfnet_{layer}.png")
    print(f"wrote {out / f'zfnet_{layer}.png'}")
