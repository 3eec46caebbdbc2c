"""Count multiply-accumulates of an ONNX graph by running it.

An independent check of the analytic counts in `costs.py`: every MatMul, Gemm and Conv output
is exposed, the model is run once with onnxruntime, and MACs are read off the real shapes
(MatMul/Gemm: output elements x reduced dimension; Conv: output elements x input channels per
group x kernel area). Written by hand because onnx's shape inference cannot resolve the
Reshape chains of a dynamic-batch export without running them.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

_COUNTED = ("MatMul", "Gemm", "Conv")


def count_onnx_macs(path: str, batch: int = 1) -> int:
    """MACs of one forward pass of the ONNX model at `path` for a batch of `batch` images."""
    proto = onnx.load(path)
    graph = proto.graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in _COUNTED]
    wanted = {name for n in nodes for name in list(n.input[:2]) + [n.output[0]] if name and name not in inits}
    existing = {o.name for o in graph.output}
    for name in sorted(wanted - existing):
        graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feed_info = session.get_inputs()[0]
    shape = [batch] + [int(d) for d in feed_info.shape[1:]]
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {feed_info.name: np.zeros(shape, np.float32)})
    shapes = {n: v.shape for n, v in zip(names, values)}
    shapes.update(inits)

    total = 0
    for node in nodes:
        out = int(np.prod(shapes[node.output[0]]))
        if node.op_type == "MatMul":
            total += out * shapes[node.input[0]][-1]
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a_shape = shapes[node.input[0]]
            total += out * (a_shape[0] if trans_a else a_shape[1])
        else:
            w = shapes[node.input[1]]
            total += out * int(np.prod(w[1:]))
    return total
