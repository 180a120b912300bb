"""Loads an encodings file into aimet-onnx's QuantizationSimModel strictly.

Usage: check_aimet_load.py MODEL.onnx CONFIG.json ENCODINGS.json

Exits 0 when `load_encodings_to_sim(sim, path, strict=True)` accepts the file for a sim built
with that quantsim config (8-bit min-max), and non-zero with AIMET's message otherwise. Used by
`tests/aimet_config.rs` when `QUANT_AIMET_PYTHON` names a Python with aimet-onnx installed.
"""

import sys

import onnx
from aimet_onnx.quantsim import QuantizationSimModel, load_encodings_to_sim


def main() -> int:
    model_path, config_path, encodings_path = sys.argv[1:4]
    model = onnx.load(model_path)
    sim = QuantizationSimModel(model, quant_scheme="tf", config_file=config_path)
    load_encodings_to_sim(sim, encodings_path, strict=True)
    print("loaded strictly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
