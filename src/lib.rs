//! `quant` quantizes ONNX models the way Qualcomm's QNN/QAIRT toolchain does, as a build system.
//!
//! Modules follow the data flow (see `ARCHITECTURE.md`):
//! `encoding` (pure math) · `stats` (mergeable statistics, range selection) · `onnx` (the only
//! module that sees protobuf) · `graph` · `calib` (input lists, samples) · `run` (float execution)
//! · `transform` (model transforms: BatchNorm folding, CLE, bias correction) · `overrides` ·
//! `export` · `placement` (AIMET quantsim configs) · `manifest` · `store` · `engine` · `cli`; beside them `atomic` (the
//! one way files are written) and `bytes` (the little-endian byte forms of stored payloads).

pub mod adaround;
pub mod atomic;
mod bytes;
pub mod calib;
pub mod cli;
pub mod encoding;
pub mod engine;
pub mod eval;
pub mod export;
pub mod graph;
pub mod manifest;
pub mod onnx;
pub mod overrides;
pub mod placement;
pub mod quantizer;
pub mod quantsim;
pub mod report;
pub mod run;
pub mod stats;
pub mod store;
pub mod transform;
pub mod watch;
