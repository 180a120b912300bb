#!/usr/bin/env python3
"""Check a QDQ ONNX model written by `quant`: onnx.checker, then run it (and optionally the float
model) in onnxruntime on the samples of a qairt input list, and print one JSON object:

    {"checker": "ok", "samples": N, "outputs": [names],
     "qdq_argmax": [[per output, per sample]], "float_argmax": [...],
     "argmax_agreement": [per output: samples whose argmax agrees],
     "sqnr_db": [per output: mean over samples of 10*log10(sum f^2 / sum (f-q)^2)],
     "sqnr_db_per_sample": [[...]], "digest": "<quant.encodings_digest>",
     "optimization": "all" | "basic" | "disable"}

Usage: check_qdq.py MODEL.qdq.onnx INPUT_LIST [--float FLOAT.onnx] [--input_dim NAME DIMS]...
                    [--optimization all|basic|disable] [--dump_outputs DIR] [--nudge EPS]

Samples are raw little-endian float32 files (paths relative to the list's folder); a line is
either one path (single-input models) or `name:=path name:=path`. `--input_dim x 1,3,48,192`
gives the shape of an input the model leaves dynamic. `--optimization` sets the session's graph
optimization level: `all` (the default, as in SessionOptions) fuses Q/DQ pairs into integer
kernels; `disable` runs every QuantizeLinear/DequantizeLinear as written around float operators,
which is what a fake-quantizing simulation computes. `--dump_outputs DIR` writes each QDQ output
of each sample as raw little-endian float32, `DIR/<sample index, 4 digits>_<output index>.raw`.
`--nudge 1e-6` multiplies every input element by 1 + EPS or 1 - EPS (alternating, in memory
order) before running, to measure how far a float difference far below any quantization step moves
the quantized model. Exits 1 with a message on stderr when the checker or a run fails.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("input_list")
    parser.add_argument("--float", dest="float_model")
    parser.add_argument("--input_dim", nargs=2, action="append", default=[])
    parser.add_argument("--optimization", choices=sorted(LEVELS), default="all")
    parser.add_argument("--dump_outputs", metavar="DIR")
    parser.add_argument("--nudge", type=float, default=0.0, metavar="EPS")
    return parser.parse_args()


def session(path, optimization="all"):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = LEVELS[optimization]
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def input_shapes(sess, dims):
    shapes = {}
    for meta in sess.get_inputs():
        if meta.name in dims:
            shapes[meta.name] = dims[meta.name]
        elif all(isinstance(d, int) and d >= 0 for d in meta.shape):
            shapes[meta.name] = list(meta.shape)
        else:
            raise SystemExit(f"input `{meta.name}` has dynamic dims {meta.shape}: pass --input_dim")
    return shapes


def samples(list_path, shapes):
    folder = os.path.dirname(os.path.abspath(list_path))
    names = list(shapes)
    with open(list_path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            feed = {}
            for i, item in enumerate(line.split()):
                if ":=" in item:
                    name, path = item.split(":=", 1)
                else:
                    name, path = names[i], item
                data = np.fromfile(os.path.join(folder, path), dtype="<f4")
                feed[name] = data.reshape(shapes[name])
            yield feed


def nudged(x, eps):
    factor = np.where(np.arange(x.size) % 2 == 0, 1.0 + eps, 1.0 - eps).astype(np.float32)
    return (x.reshape(-1) * factor).reshape(x.shape).astype(np.float32)


def sqnr_db(f, q):
    f = f.astype(np.float64)
    noise = float(np.sum((f - q.astype(np.float64)) ** 2))
    signal = float(np.sum(f * f))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def main():
    args = parse_args()
    model = onnx.load(args.model)
    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as e:
        print(f"onnx.checker: {e}", file=sys.stderr)
        return 1
    digest = {p.key: p.value for p in model.metadata_props}.get("quant.encodings_digest")
    dims = {name: [int(d) for d in value.split(",")] for name, value in args.input_dim}
    qdq = session(args.model, args.optimization)
    if args.dump_outputs:
        os.makedirs(args.dump_outputs, exist_ok=True)
    shapes = input_shapes(qdq, dims)
    outputs = [o.name for o in qdq.get_outputs()]
    reference = session(args.float_model) if args.float_model else None
    qdq_argmax = [[] for _ in outputs]
    float_argmax = [[] for _ in outputs]
    per_sample = [[] for _ in outputs]
    count = 0
    for feed in samples(args.input_list, shapes):
        count += 1
        if args.nudge:
            feed = {name: nudged(x, args.nudge) for name, x in feed.items()}
        quantized = qdq.run(outputs, feed)
        if args.dump_outputs:
            for k, q in enumerate(quantized):
                path = os.path.join(args.dump_outputs, f"{count - 1:04}_{k}.raw")
                np.ascontiguousarray(q, dtype="<f4").tofile(path)
        for k, q in enumerate(quantized):
            qdq_argmax[k].append(int(np.argmax(q.reshape(q.shape[0], -1)[0])) if q.size else -1)
        if reference is not None:
            floats = reference.run(outputs, feed)
            for k, (f, q) in enumerate(zip(floats, quantized)):
                float_argmax[k].append(int(np.argmax(f.reshape(f.shape[0], -1)[0])) if f.size else -1)
                per_sample[k].append(sqnr_db(f, q))
    result = {
        "checker": "ok",
        "samples": count,
        "outputs": outputs,
        "digest": digest,
        "qdq_argmax": qdq_argmax,
        "optimization": args.optimization,
    }
    if reference is not None:
        result["float_argmax"] = float_argmax
        result["argmax_agreement"] = [
            sum(int(a == b) for a, b in zip(qa, fa)) for qa, fa in zip(qdq_argmax, float_argmax)
        ]
        result["sqnr_db_per_sample"] = per_sample
        result["sqnr_db"] = [sum(v) / len(v) if v else None for v in per_sample]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
