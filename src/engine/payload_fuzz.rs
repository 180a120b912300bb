//! Generated-input testing of the store's binary payload decoders: an entry another process
//! wrote, damaged or truncated, decodes to a value or to `None` (a miss), never a panic, and
//! what decodes re-encodes to the same bytes where the form is canonical. The case count
//! follows `QUANT_FUZZ_CASES` like `tests/fuzz_parsers.rs` (which covers the public codecs).

use super::fresh::StoredUnitState;
use super::stored::{
    decode_input_means, decode_merged_statistics, decode_sample_statistics,
    decode_transformed_model, encode_input_means, encode_merged_statistics,
    encode_sample_statistics, encode_transformed_model,
};
use crate::eval::{FloatTotals, FloatTrace, SimTrace};
use crate::stats::{StatisticsSettings, TensorStatistics};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("QUANT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn statistics() -> Vec<TensorStatistics> {
    [false, true]
        .into_iter()
        .map(|histogram| {
            let mut s = TensorStatistics::new(StatisticsSettings { histogram });
            s.observe(&[-1.5, 0.0, 2.25, 7.0, f32::NAN]);
            s
        })
        .collect()
}

/// Real payloads of every binary kind, and each decoder by name.
fn seeds() -> Vec<Vec<u8>> {
    let names = vec!["a".to_string(), "b/c".to_string()];
    let empty_trace = FloatTrace {
        tensors: Vec::new(),
        terminal: Vec::new(),
        outputs: Vec::new(),
    };
    vec![
        encode_sample_statistics(&names, &statistics()),
        encode_transformed_model(&["folded x".into()], b"\x08\x07\x12\x00"),
        encode_input_means(&[("conv".into(), vec![1.0, -2.5, f64::INFINITY])]),
        encode_merged_statistics(&names, &statistics(), &[]),
        empty_trace.encode(),
        FloatTotals {
            tensors: Vec::new(),
            samples: vec![empty_trace],
        }
        .encode(),
        SimTrace {
            tensors: Vec::new(),
            before: Vec::new(),
            outputs: Vec::new(),
        }
        .encode(),
    ]
}

/// Every decoder on `bytes`; re-encodes what the canonical forms accept.
fn decode_everything(bytes: &[u8]) {
    if let Some((names, stats)) = decode_sample_statistics(bytes) {
        // The histogram codec accepts some non-canonical forms (the long run found one), which
        // the store's digest keeps from ever being read; what it decodes must still re-encode
        // to a form that decodes to itself.
        let again = encode_sample_statistics(&names, &stats);
        let (n2, s2) = decode_sample_statistics(&again).expect("re-encoded statistics decode");
        assert_eq!(encode_sample_statistics(&n2, &s2), again);
    }
    if let Some((lines, model)) = decode_transformed_model(bytes) {
        assert_eq!(encode_transformed_model(&lines, &model), bytes);
    }
    if let Some(layers) = decode_input_means(bytes) {
        assert_eq!(encode_input_means(&layers), bytes);
    }
    let _ = decode_merged_statistics(bytes);
    let _ = super::evaluate::decode_sim_traces(bytes);
    if let Some(state) = StoredUnitState::decode(bytes) {
        assert_eq!(state.encode(), bytes);
    }
    let _ = FloatTrace::decode(bytes);
    let _ = FloatTotals::decode(bytes);
    let _ = SimTrace::decode(bytes);
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let huge = prop_oneof![
        Just(u64::MAX.to_le_bytes().to_vec()),
        Just((1u64 << 40).to_le_bytes().to_vec()),
        Just(f64::NAN.to_le_bytes().to_vec()),
        Just(vec![0xff; 10]),
        prop::collection::vec(any::<u8>(), 1..16),
    ];
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::Flip(at, bit)),
        1 => any::<usize>().prop_map(Edit::Truncate),
        2 => (any::<usize>(), huge).prop_map(|(at, b)| Edit::Insert(at, b)),
    ]
}

#[test]
fn damaged_payloads_decode_to_a_value_or_a_miss() {
    let seeds = seeds();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        any::<usize>(),
        prop::collection::vec(edit(), 0..5),
        prop::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(seed, edits, noise, random)| {
            let mut b = if random {
                noise
            } else {
                seeds[seed % seeds.len()].clone()
            };
            for e in edits {
                let n = b.len();
                match e {
                    Edit::Flip(at, bit) if n > 0 => b[at % n] ^= 1 << bit,
                    Edit::Truncate(at) => b.truncate(at % (n + 1)),
                    Edit::Insert(at, bytes) => {
                        let at = at % (n + 1);
                        b.splice(at..at, bytes);
                    }
                    _ => {}
                }
            }
            decode_everything(&b);
            Ok(())
        })
        .unwrap();
    println!("fuzz: store payloads: {} cases, 0 failures", cases());
}
