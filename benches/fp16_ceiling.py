"""How close an FP16 model can come to the float model, measured in onnxruntime.

For a float model and quant's FP16 export of it, prints the output SQNR (dB) against the float
model on each eval sample for:

  fp16 export   the FP16 model quant wrote (every weight and activation float16);
  weights fp16  the float model with only its weights rounded to float16 (activations float32);
  mantissa 11   the float model with its weights rounded to float16's 11-bit significand but
                float32's exponent range (no float16 subnormals or overflow).

The last two bound what any FP16 conversion can reach: no converter keeps a weight more exact
than float16 holds it. Pass a model with BatchNorm folded (a `.prep` model): unfolded, a
BatchNorm variance above 65504 overflows float16 and "weights fp16" says 0 dB.

Usage: python benches/fp16_ceiling.py FLOAT.onnx FP16.onnx INPUT_LIST [SAMPLES]
(raw float32 samples, one per line, shaped as the model's only input with dynamic dims taken
from the sample's size for a square NCHW image).
"""

import math
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper


def sqnr(reference, other):
    noise = ((reference - other) ** 2).mean()
    return float("inf") if noise == 0 else 10 * math.log10((reference**2).mean() / noise)


def rounded(model, round_fn):
    """The model with every float constant (initializer or Constant node) rounded."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    constants = list(model.graph.initializer)
    constants += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute
                  if a.name == "value"]
    for tensor in constants:
        if tensor.data_type == TensorProto.FLOAT:
            values = round_fn(numpy_helper.to_array(tensor))
            tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), tensor.name))
    return ort.InferenceSession(model.SerializeToString())


def significand_11(values):
    mantissa, exponent = np.frexp(values)
    return np.ldexp(np.round(mantissa * 2048) / 2048, exponent)


def main():
    float_path, fp16_path, input_list = sys.argv[1:4]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    model = onnx.load(float_path)
    reference = ort.InferenceSession(float_path)
    variants = {
        "fp16 export": ort.InferenceSession(fp16_path),
        "weights fp16": rounded(model, lambda v: v.astype(np.float16).astype(np.float32)),
        "mantissa 11": rounded(model, significand_11),
    }
    spec = reference.get_inputs()[0]
    folder = os.path.dirname(input_list)
    samples = [line.split()[0] for line in open(input_list) if line.strip()][:count]
    print("| sample | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for sample in samples:
        x = np.fromfile(os.path.join(folder, sample), dtype=np.float32)
        side = int(round(math.sqrt(x.size / 3)))
        x = x.reshape(1, 3, side, x.size // 3 // side)
        want = reference.run(None, {spec.name: x})[0]
        row = []
        for session in variants.values():
            got = session.run(None, {spec.name: x})[0].astype(np.float32)
            row.append(f"{sqnr(want, got):.1f} dB")
        print(f"| {sample} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
