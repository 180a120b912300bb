//! Writing what a build produced, in formats other tools read: AIMET encodings JSON
//! ([`aimet`]), which `qairt-converter --quantization_overrides` accepts, and QDQ ONNX
//! models ([`qdq`]) that onnxruntime runs.
//!
//! **Architecture Invariant:** exporters are pure functions from values to bytes (plus an
//! atomic file write). They compute no encodings and make no decisions about which tensors are
//! quantized; equal inputs give equal bytes.

pub mod aimet;
pub mod float;
pub mod qdq;
