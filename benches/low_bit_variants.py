#!/usr/bin/env python3
"""Runs a QDQ model written by `quant quantize` in onnxruntime on an eval list, as written and
with what-if edits that AIMET's W4A8 simulation differs by, and prints one JSON object per run:

    {"variant", "top1" (with --labels), "p_float_class" (with --labels: the mean probability the
     quantized model gives the float model's class, smoother than top-1), "sqnr_db" (mean over
     samples of the first output against the float model)}

Variants:
  as_written   the model unchanged
  conv_relu    the QuantizeLinear/DequantizeLinear pair on a Conv output whose only consumer is
               a Relu removed (AIMET's Conv+Relu supergroup: that output is not quantized)
  float_bias   Conv/Gemm biases read from the float model instead of their DequantizeLinear
               (AIMET leaves biases float)
  both         conv_relu and float_bias

The what-ifs run with graph optimizations disabled: onnxruntime 1.32's MatMul+Add fusion
writes an invalid DequantizeLinear (an `axis` below opset 13) for a per-row Gemm weight with a
float bias.

Usage: low_bit_variants.py MODEL.qdq.onnx FLOAT.onnx INPUT_LIST [--labels LABELS] [--dims 1,3,48,192]
"""

import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort


def consumers(graph):
    found = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def without_conv_relu_pairs(model):
    graph = model.graph
    users = consumers(graph)
    outputs = {o.name for o in graph.output}
    drop, rename = set(), {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        out = node.output[0]
        q = users.get(out, [])
        if len(q) != 1 or q[0].op_type != "QuantizeLinear":
            continue
        dq = users.get(q[0].output[0], [])
        if len(dq) != 1 or dq[0].op_type != "DequantizeLinear" or dq[0].output[0] in outputs:
            continue
        relu = users.get(dq[0].output[0], [])
        if len(relu) == 1 and relu[0].op_type == "Relu":
            drop.update({id(q[0]), id(dq[0])})
            rename[dq[0].output[0]] = out
    keep = [n for n in graph.node if id(n) not in drop]
    for node in keep:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
    del graph.node[:]
    graph.node.extend(keep)


def with_float_biases(model, float_model):
    graph = model.graph
    floats = {t.name: t for t in float_model.graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    drop = set()
    for node in graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2:
            dq = producer.get(node.input[2])
            if dq is not None and dq.op_type == "DequantizeLinear" and node.input[2] in floats:
                drop.add(id(dq))
                graph.initializer.append(floats[node.input[2]])
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(keep)


def session(model, optimize):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main():
    ort.set_default_logger_severity(3)
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("float_model")
    parser.add_argument("input_list")
    parser.add_argument("--labels")
    parser.add_argument("--dims", required=True)
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]
    folder = os.path.dirname(args.input_list)
    names = [l.strip() for l in open(args.input_list) if l.strip()]
    samples = [np.fromfile(os.path.join(folder, n), dtype="<f4").reshape(dims) for n in names]
    float_model = onnx.load(args.float_model)
    float_session = session(float_model, True)
    input_name = float_session.get_inputs()[0].name
    reference = [float_session.run(None, {input_name: x})[0] for x in samples]
    labels = [int(l) for l in open(args.labels) if l.strip()] if args.labels else None
    for variant in ["as_written", "conv_relu", "float_bias", "both"]:
        model = onnx.load(args.model)
        if variant in ("conv_relu", "both"):
            without_conv_relu_pairs(model)
        if variant in ("float_bias", "both"):
            with_float_biases(model, float_model)
        run = session(model, variant == "as_written")
        outputs = [run.run(None, {input_name: x})[0] for x in samples]
        report = {"variant": variant}
        if labels:
            report["top1"] = sum(int(np.argmax(o) == l) for o, l in zip(outputs, labels))
            report["p_float_class"] = round(
                float(np.mean([o.flatten()[np.argmax(f)] for o, f in zip(outputs, reference)])), 4
            )
        sqnr = []
        for f, q in zip(reference, outputs):
            f, q = f.astype(np.float64), q.astype(np.float64)
            sqnr.append(10 * np.log10((f**2).sum() / ((f - q) ** 2).sum()))
        report["sqnr_db"] = round(float(np.mean(sqnr)), 2)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
