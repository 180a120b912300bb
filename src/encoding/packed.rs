//! Packed 4-bit storage: two 4-bit stored integers per byte, the first value in the low nibble
//! (the seed's example packs `(10, 4)` as `0x4A`).
//!
//! Per-channel (per-row) tensors are packed row by row: each row starts on a byte boundary and
//! takes `ceil(row_len / 2)` bytes, the unused high nibble of an odd row being 0. A per-tensor
//! encoding is one row holding the whole tensor. Rows are contiguous runs of `row_len` values;
//! for channels along an axis other than the outermost, the caller lays the values out by
//! channel first. This module only moves bits: it must not quantize.
//!
//! ONNX's `INT4`/`UINT4` tensors use the same nibble order but pack the whole flattened tensor
//! as one run, rows not starting on a byte boundary ([`pack_nibbles`] over all values): the two
//! layouts agree exactly when every row has an even length.

use super::kernels::StoredInteger;

/// Why values could not be packed or unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    /// A value outside the 4-bit range of its type (`0..=15` or `-8..=7`).
    #[error("value {value} at index {index} does not fit in 4 bits")]
    OutOfRange {
        /// Position in the input.
        index: usize,
        /// The value.
        value: i64,
    },
    /// Zero row length, or a length that is not a whole number of rows.
    #[error("{len} values do not form rows of {row_len}")]
    Ragged {
        /// Number of values (or bytes, when unpacking).
        len: usize,
        /// Row length asked for.
        row_len: usize,
    },
}

/// A stored-integer type that 4-bit values live in before packing: `u8` (unsigned schemas,
/// `0..=15`) or `i8` (signed schemas, `-8..=7`).
pub trait Nibble: StoredInteger {
    /// Smallest 4-bit value of this signedness.
    const NIBBLE_MIN: i64;
    /// Largest 4-bit value of this signedness.
    const NIBBLE_MAX: i64;
    /// The low four bits.
    fn to_nibble(self) -> u8;
    /// Back from four bits, sign-extending for `i8`.
    fn from_nibble(bits: u8) -> Self;
    /// The value as `i64`, for range checks and errors.
    fn as_i64(self) -> i64;
}

impl Nibble for u8 {
    const NIBBLE_MIN: i64 = 0;
    const NIBBLE_MAX: i64 = 15;
    fn to_nibble(self) -> u8 {
        self & 0x0F
    }
    fn from_nibble(bits: u8) -> Self {
        bits & 0x0F
    }
    fn as_i64(self) -> i64 {
        i64::from(self)
    }
}

impl Nibble for i8 {
    const NIBBLE_MIN: i64 = -8;
    const NIBBLE_MAX: i64 = 7;
    fn to_nibble(self) -> u8 {
        (self as u8) & 0x0F
    }
    fn from_nibble(bits: u8) -> Self {
        // Shift the nibble to the top and back down arithmetically to sign-extend it.
        ((bits << 4) as i8) >> 4
    }
    fn as_i64(self) -> i64 {
        i64::from(self)
    }
}

/// Bytes needed for `rows` rows of `row_len` packed 4-bit values.
pub fn packed_len(rows: usize, row_len: usize) -> usize {
    rows * row_len.div_ceil(2)
}

/// Packs `values` (rows of `row_len` values) two per byte, low nibble first, each row padded
/// to a whole byte. For a per-tensor encoding pass `row_len = values.len()`.
pub fn pack_4bit<T: Nibble>(values: &[T], row_len: usize) -> Result<Vec<u8>, PackError> {
    if row_len == 0 || !values.len().is_multiple_of(row_len) {
        return Err(PackError::Ragged {
            len: values.len(),
            row_len,
        });
    }
    if let Some(index) = values
        .iter()
        .position(|v| !(T::NIBBLE_MIN..=T::NIBBLE_MAX).contains(&v.as_i64()))
    {
        return Err(PackError::OutOfRange {
            index,
            value: values[index].as_i64(),
        });
    }
    let mut packed = Vec::with_capacity(packed_len(values.len() / row_len, row_len));
    let mut nibbles = Vec::with_capacity(row_len);
    for row in values.chunks_exact(row_len) {
        nibbles.clear();
        nibbles.extend(row.iter().map(|v| v.to_nibble()));
        packed.extend(pack_nibbles(&nibbles));
    }
    Ok(packed)
}

/// The low four bits of each byte of `nibbles`, two per byte, the first in the low nibble; an
/// odd count leaves the last high nibble 0. This is ONNX's `INT4`/`UINT4` `raw_data` when
/// `nibbles` is the whole tensor (a signed value's two's-complement low bits, `-1` → `0xF`).
pub fn pack_nibbles(nibbles: &[u8]) -> impl Iterator<Item = u8> + '_ {
    nibbles
        .chunks(2)
        .map(|pair| (pair[0] & 0x0F) | (pair.get(1).map_or(0, |high| high & 0x0F) << 4))
}

/// Unpacks rows of `row_len` values packed by [`pack_4bit`]; `packed` must hold whole rows of
/// `ceil(row_len / 2)` bytes.
pub fn unpack_4bit<T: Nibble>(packed: &[u8], row_len: usize) -> Result<Vec<T>, PackError> {
    let row_bytes = row_len.div_ceil(2);
    if row_len == 0 || !packed.len().is_multiple_of(row_bytes) {
        return Err(PackError::Ragged {
            len: packed.len(),
            row_len,
        });
    }
    let mut values = Vec::with_capacity(packed.len() / row_bytes * row_len);
    for row in packed.chunks_exact(row_bytes) {
        for (i, &byte) in row.iter().enumerate() {
            values.push(T::from_nibble(byte));
            if 2 * i + 1 < row_len {
                values.push(T::from_nibble(byte >> 4));
            }
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn seed_example_packs_to_0x4a() {
        assert_eq!(pack_4bit(&[10u8, 4], 2).unwrap(), [0x4A]);
        assert_eq!(unpack_4bit::<u8>(&[0x4A], 2).unwrap(), [10, 4]);
    }

    #[test]
    fn rows_are_packed_separately() {
        // The seed's (3,3,3,32) weight: 27 values per channel take 14 bytes.
        assert_eq!(packed_len(32, 27), 32 * 14);
        let values: Vec<u8> = (0..6).collect();
        // Two rows of 3: [0,1,2] → 0x10, 0x02; [3,4,5] → 0x43, 0x05.
        assert_eq!(pack_4bit(&values, 3).unwrap(), [0x10, 0x02, 0x43, 0x05]);
        assert_eq!(
            unpack_4bit::<u8>(&[0x10, 0x02, 0x43, 0x05], 3).unwrap(),
            values
        );
    }

    #[test]
    fn seed_per_channel_example_takes_14_bytes_a_channel() {
        // The seed's (3,3,3,32) weight, laid out by channel: 32 rows of 27 values.
        let value = |c: usize, i: usize| ((c * 5 + i) % 16) as u8;
        let values: Vec<u8> = (0..32)
            .flat_map(|c| (0..27).map(move |i| value(c, i)))
            .collect();
        let packed = pack_4bit(&values, 27).unwrap();
        assert_eq!(packed.len(), 32 * 14);
        for c in 0..32 {
            let row = &packed[c * 14..(c + 1) * 14];
            for (b, &byte) in row.iter().enumerate() {
                let low = value(c, 2 * b);
                let high = if 2 * b + 1 < 27 {
                    value(c, 2 * b + 1)
                } else {
                    0
                };
                assert_eq!(byte, low | (high << 4), "channel {c} byte {b}");
            }
        }
        assert_eq!(unpack_4bit::<u8>(&packed, 27).unwrap(), values);
    }

    #[test]
    fn onnx_layout_runs_across_rows() {
        // ONNX packs the flattened tensor: [[1, 2, 3], [4, 5, 6]] → 0x21 0x43 0x65, where the
        // per-row layout gives 0x21 0x03 0x54 0x06. (onnx.helper.make_tensor(..., INT4, [2, 3],
        // [1, 2, 3, 4, 5, 6]) writes 0x21 0x43 0x65.)
        let values = [1u8, 2, 3, 4, 5, 6];
        assert_eq!(
            pack_nibbles(&values).collect::<Vec<_>>(),
            [0x21, 0x43, 0x65]
        );
        assert_eq!(pack_4bit(&values, 3).unwrap(), [0x21, 0x03, 0x54, 0x06]);
        // One padding nibble at the end of an odd count; signed values keep their low bits.
        let signed = [-1i8, -8, 7];
        let low_bits: Vec<u8> = signed.iter().map(|&v| v as u8).collect();
        assert_eq!(pack_nibbles(&low_bits).collect::<Vec<_>>(), [0x8F, 0x07]);
    }

    #[test]
    fn signed_values_sign_extend() {
        let values = [-8i8, 7, -1, 0, 3];
        let packed = pack_4bit(&values, 5).unwrap();
        assert_eq!(packed, [0x78, 0x0F, 0x03]);
        assert_eq!(unpack_4bit::<i8>(&packed, 5).unwrap(), values);
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(
            pack_4bit(&[1u8, 16], 2),
            Err(PackError::OutOfRange {
                index: 1,
                value: 16
            })
        );
        assert_eq!(
            pack_4bit(&[0i8, -9], 2),
            Err(PackError::OutOfRange {
                index: 1,
                value: -9
            })
        );
        assert!(pack_4bit(&[1u8, 2, 3], 2).is_err());
        assert!(pack_4bit::<u8>(&[], 0).is_err());
        assert!(unpack_4bit::<u8>(&[1, 2, 3], 3).is_err());
    }

    proptest! {
        #[test]
        fn unpack_inverts_pack_unsigned(rows in 1usize..6, row_len in 1usize..20, seed in any::<u64>()) {
            let values: Vec<u8> = (0..rows * row_len)
                .map(|i| ((seed >> (i % 60)) as u8).wrapping_add(i as u8) & 0x0F)
                .collect();
            let packed = pack_4bit(&values, row_len).unwrap();
            prop_assert_eq!(packed.len(), packed_len(rows, row_len));
            prop_assert_eq!(unpack_4bit::<u8>(&packed, row_len).unwrap(), values);
        }

        #[test]
        fn unpack_inverts_pack_signed(row_len in 1usize..20, values in prop::collection::vec(-8i8..=7, 1..60)) {
            let n = values.len() / row_len * row_len;
            prop_assume!(n > 0);
            let values = &values[..n];
            let packed = pack_4bit(values, row_len).unwrap();
            prop_assert_eq!(unpack_4bit::<i8>(&packed, row_len).unwrap(), values);
        }
    }
}
