#!/usr/bin/env python3
"""Run a float16 model written by `quant` and the float model it came from in onnxruntime on the
samples of a qairt input list, and print one JSON object:

    {"samples": N, "input_types": [...], "output_types": [...], "float16_initializers": K,
     "float32_initializers": K, "sqnr_db": mean over samples of 10*log10(sum f^2 / sum (f-h)^2),
     "argmax_agreement": samples whose argmax agrees}

Usage: check_fp16.py MODEL.fp16.onnx FLOAT.onnx INPUT_LIST --input_dim DIMS
Samples are raw little-endian float32 files (paths relative to the list's folder), one per line.
"""

import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort

parser = argparse.ArgumentParser()
parser.add_argument("fp16")
parser.add_argument("float")
parser.add_argument("input_list")
parser.add_argument("--input_dim", required=True)
args = parser.parse_args()
ort.set_default_logger_severity(3)

model = onnx.load(args.fp16)
onnx.checker.check_model(model)
kinds = [i.data_type for i in model.graph.initializer]
types = lambda values: [onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in values]
half = ort.InferenceSession(args.fp16)
full = ort.InferenceSession(args.float)
shape = [int(d) for d in args.input_dim.split(",")]
base = os.path.dirname(os.path.abspath(args.input_list))
sqnr, agree, n = [], 0, 0
for line in open(args.input_list):
    line = line.strip()
    if not line:
        continue
    x = np.fromfile(os.path.join(base, line.split()[0]), np.float32).reshape(shape)
    feed = half.get_inputs()[0]
    h_in = x.astype(np.float16) if feed.type == "tensor(float16)" else x
    f = full.run(None, {full.get_inputs()[0].name: x})[0].astype(np.float64)
    h = half.run(None, {feed.name: h_in})[0].astype(np.float64)
    noise = float(np.sum((f - h) ** 2))
    sqnr.append(10 * np.log10(float(np.sum(f * f)) / noise) if noise > 0 else 300.0)
    agree += int(np.argmax(f) == np.argmax(h))
    n += 1
print(json.dumps({
    "samples": n,
    "input_types": types(model.graph.input),
    "output_types": types(model.graph.output),
    "float16_initializers": kinds.count(onnx.TensorProto.FLOAT16),
    "float32_initializers": kinds.count(onnx.TensorProto.FLOAT),
    "sqnr_db": float(np.mean(sqnr)),
    "argmax_agreement": agree,
}))
