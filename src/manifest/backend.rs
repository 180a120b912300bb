//! The backend capability table: which QNN backends run quantized models, and at which bitwidths.
//!
//! This is the ONE place the capabilities live; `book/src/backends.md` documents the same table.
//! It must not know about manifests, spans or diagnostics: the resolver asks it questions.

use std::fmt;

use crate::encoding::Bitwidth;

use super::FloatBitwidth;

/// A QNN backend a target builds for (the seed's CPU, GPU, DSP, HTP, HTA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// QNN CPU backend: float models only.
    Cpu,
    /// QNN GPU backend: float models only (FP16 or FP32).
    Gpu,
    /// Hexagon DSP (HVX): quantized models only.
    Dsp,
    /// Hexagon Tensor Processor: quantized models, with float ops in mixed precision.
    Htp,
    /// Hexagon Tensor Accelerator: quantized models only.
    Hta,
}

/// What a backend can run. Bitwidth lists are in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// Whether the backend runs fixed-point (quantized) models; otherwise it runs float models
    /// and takes no calibration, overrides or quantizer options.
    pub quantized: bool,
    /// Activation bitwidths it runs (empty for float backends).
    pub act_bitwidths: &'static [u32],
    /// Weight bitwidths it runs (empty for float backends).
    pub weights_bitwidths: &'static [u32],
    /// Bias bitwidths it runs (empty for float backends).
    pub bias_bitwidths: &'static [u32],
    /// Float bitwidths: the whole model on a float backend, the float ops of a mixed-precision
    /// graph on a quantized one (empty: no float ops at all).
    pub float_bitwidths: &'static [u32],
}

/// The table itself, in `Backend::ALL` order. The seed fixes only the first column (CPU/GPU
/// float, DSP/HTP/HTA quantized) and FP16 for GPU and HTP; the bitwidth columns are our stated
/// assumptions (see `book/src/backends.md`).
const CAPABILITIES: [Capabilities; 5] = [
    // cpu
    Capabilities {
        quantized: false,
        act_bitwidths: &[],
        weights_bitwidths: &[],
        bias_bitwidths: &[],
        float_bitwidths: &[32],
    },
    // gpu
    Capabilities {
        quantized: false,
        act_bitwidths: &[],
        weights_bitwidths: &[],
        bias_bitwidths: &[],
        float_bitwidths: &[16, 32],
    },
    // dsp
    Capabilities {
        quantized: true,
        act_bitwidths: &[8, 16],
        weights_bitwidths: &[8],
        bias_bitwidths: &[8, 32],
        float_bitwidths: &[],
    },
    // htp
    Capabilities {
        quantized: true,
        act_bitwidths: &[8, 16],
        weights_bitwidths: &[4, 8, 16],
        bias_bitwidths: &[8, 32],
        float_bitwidths: &[16, 32],
    },
    // hta
    Capabilities {
        quantized: true,
        act_bitwidths: &[8],
        weights_bitwidths: &[8],
        bias_bitwidths: &[8, 32],
        float_bitwidths: &[],
    },
];

impl Backend {
    /// Every backend, in the order of the capability table.
    pub const ALL: [Backend; 5] = [
        Backend::Cpu,
        Backend::Gpu,
        Backend::Dsp,
        Backend::Htp,
        Backend::Hta,
    ];

    /// The manifest spelling (`cpu`, `gpu`, `dsp`, `htp`, `hta`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
            Backend::Dsp => "dsp",
            Backend::Htp => "htp",
            Backend::Hta => "hta",
        }
    }

    /// Parses the manifest spelling.
    pub fn from_name(name: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.as_str() == name)
    }

    /// What this backend can run.
    pub const fn capabilities(self) -> &'static Capabilities {
        &CAPABILITIES[self as usize]
    }

    /// Whether this backend runs quantized models (DSP, HTP, HTA).
    pub const fn is_quantized(self) -> bool {
        self.capabilities().quantized
    }

    /// Whether activations may use `bitwidth` on this backend.
    pub fn allows_act_bitwidth(self, bitwidth: Bitwidth) -> bool {
        self.capabilities().act_bitwidths.contains(&bitwidth.bits())
    }

    /// Whether weights may use `bitwidth` on this backend.
    pub fn allows_weights_bitwidth(self, bitwidth: Bitwidth) -> bool {
        self.capabilities()
            .weights_bitwidths
            .contains(&bitwidth.bits())
    }

    /// Whether biases may use `bitwidth` on this backend.
    pub fn allows_bias_bitwidth(self, bitwidth: Bitwidth) -> bool {
        self.capabilities()
            .bias_bitwidths
            .contains(&bitwidth.bits())
    }

    /// Whether float tensors may use `bitwidth` on this backend.
    pub fn allows_float_bitwidth(self, bitwidth: FloatBitwidth) -> bool {
        self.capabilities()
            .float_bitwidths
            .contains(&bitwidth.bits())
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_follow_the_seed_split_between_float_and_quantized() {
        let quantized: Vec<_> = Backend::ALL
            .into_iter()
            .filter(|b| b.is_quantized())
            .map(Backend::as_str)
            .collect();
        assert_eq!(quantized, ["dsp", "htp", "hta"]);
        for backend in [Backend::Cpu, Backend::Gpu] {
            let caps = backend.capabilities();
            assert!(caps.act_bitwidths.is_empty() && caps.weights_bitwidths.is_empty());
            assert!(caps.float_bitwidths.contains(&32));
        }
    }

    #[test]
    fn names_round_trip() {
        for backend in Backend::ALL {
            assert_eq!(Backend::from_name(backend.as_str()), Some(backend));
        }
        assert_eq!(Backend::from_name("npu"), None);
    }

    #[test]
    fn only_htp_takes_16_bit_weights() {
        let b16 = Bitwidth::B16;
        let takers: Vec<_> = Backend::ALL
            .into_iter()
            .filter(|b| b.allows_weights_bitwidth(b16))
            .collect();
        assert_eq!(takers, [Backend::Htp]);
    }
}
