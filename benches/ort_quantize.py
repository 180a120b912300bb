"""onnxruntime's quantize_static on a model and a qairt input list, as the peer of
`quant quantize` in benches/peers.sh.

Usage: ort_quantize.py MODEL.onnx INPUT_LIST.txt OUT.onnx MinMax|Entropy

The samples are raw float32 files (batch 1) named in the list relative to its folder, one input,
its shape taken from the model. Settings are those of the reference fixtures: QDQ, per-tensor,
uint8 activations / int8 weights, default options.
"""

import os
import sys

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)


class ListReader(CalibrationDataReader):
    """Feeds the samples of a qairt input list one at a time."""

    def __init__(self, model_path, list_path):
        model = onnx.load(model_path, load_external_data=False)
        graph_input = model.graph.input[0]
        self.name = graph_input.name
        self.shape = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
        folder = os.path.dirname(os.path.abspath(list_path))
        with open(list_path) as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
        self.paths = [os.path.join(folder, line) for line in lines]
        self.next = 0

    def get_next(self):
        if self.next >= len(self.paths):
            return None
        data = np.fromfile(self.paths[self.next], dtype="<f4").reshape(self.shape)
        self.next += 1
        return {self.name: data}

    def rewind(self):
        self.next = 0


def main():
    model, input_list, output, method = sys.argv[1:5]
    quantize_static(
        model_input=model,
        model_output=output,
        calibration_data_reader=ListReader(model, input_list),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
    )


if __name__ == "__main__":
    main()
