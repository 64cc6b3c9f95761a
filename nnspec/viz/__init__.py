"""Pictures of networks: the IR as a Graphviz drawing, and what a trained
network computes.

    to_dot(graph), write_graph(dot, "g.svg")        the IR (dot.py, `nnspec graph`)
    maps(net, layer, x)                             a layer's feature maps
    filters(net[, layer])                           a convolution's weights
    deconv(net, layer, x, unit)                     one activation projected to the input
    saliency(net, x[, cls])                         d(class score) / d(input)
    strongest(net, layer, xs, units=8, top=9)       the deconvnet grid (project.py)

`nnspec visualize` (command.py) draws the last four as PNGs (draw.py).
Importing this package imports neither matplotlib nor Numba.
"""
from .dot import COLORS, to_dot, write_graph
from .project import Strongest, deconv, filters, layer_names, maps, predicted, saliency, strongest

__all__ = ["COLORS", "to_dot", "write_graph", "Strongest", "deconv", "filters", "layer_names",
           "maps", "predicted", "saliency", "strongest"]
