#!/usr/bin/env python3
"""Bytes of a QDQ model's stored weights: the integer initializers behind a DequantizeLinear
whose output is input 1 (the weight) of a Conv, ConvTranspose, Gemm or MatMul. Prints one JSON
object per model: {"model", "file_bytes", "weight_bytes", "weights", "dtypes"}.

Usage: qdq_weight_bytes.py MODEL.qdq.onnx...
"""

import json
import os
import sys

import onnx

WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def weight_bytes(path):
    model = onnx.load(path)
    graph = model.graph
    weight_inputs = {n.input[1] for n in graph.node if n.op_type in WEIGHTED and len(n.input) > 1}
    stored = {
        n.input[0]
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.output[0] in weight_inputs
    }
    total, count, dtypes = 0, 0, set()
    for init in graph.initializer:
        if init.name in stored:
            total += len(init.raw_data)
            count += 1
            dtypes.add(onnx.TensorProto.DataType.Name(init.data_type))
    return {
        "model": path,
        "file_bytes": os.path.getsize(path),
        "weight_bytes": total,
        "weights": count,
        "dtypes": sorted(dtypes),
    }


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps(weight_bytes(path)))
