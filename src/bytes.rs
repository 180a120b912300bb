//! The little-endian byte forms shared by the store payloads the engine writes, the statistics
//! codec and the evaluation traces: a [`Writer`] of primitive fields and the [`Reader`] of the
//! same fields. Every read is `None` on bytes that end too early, so damaged bytes are a miss,
//! never a panic or a huge allocation.
//!
//! It owns only the primitive fields; each byte form adds its own in its module. A field written
//! by a `Writer` method is read back by the `Reader` method of the same name (the length-prefixed
//! ones by `prefixed_bytes` / `prefixed_str` on both sides), so the two cannot drift apart.

/// Reads fixed-size fields off the front of a slice.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    /// An `f32` by its bits, so the value comes back exactly (NaN payloads, `-0.0`).
    pub(crate) fn f32(&mut self) -> Option<f32> {
        self.u32().map(f32::from_bits)
    }

    /// An `f64` by its bits.
    pub(crate) fn f64(&mut self) -> Option<f64> {
        self.u64().map(f64::from_bits)
    }

    /// A [`Writer::varint`]; `None` when truncated or longer than a `u64`.
    pub(crate) fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return None;
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A count of items each at least `min_size` bytes long, checked against what is left so a
    /// damaged count cannot ask for a huge allocation.
    pub(crate) fn count(&mut self, min_size: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.0.len() / min_size.max(1)).then_some(n)
    }

    /// A [`Writer::prefixed_bytes`]: a `u64` length, then that many bytes.
    pub(crate) fn prefixed_bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }

    /// A [`Writer::prefixed_str`]; `None` when the bytes are not UTF-8.
    pub(crate) fn prefixed_str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.prefixed_bytes()?).ok()
    }
}

/// Appends fields to a byte buffer, in the forms [`Reader`] reads.
pub(crate) struct Writer<'a>(pub(crate) &'a mut Vec<u8>);

impl Writer<'_> {
    /// Bytes as they are, with no length: for fixed-size fields (digests, keys) and for byte
    /// forms that carry their own framing.
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// One byte.
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A little-endian `u32`.
    pub(crate) fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }

    /// An `f32` by its bits.
    pub(crate) fn f32(&mut self, v: f32) {
        self.u32(v.to_bits());
    }

    /// An `f64` by its bits.
    pub(crate) fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }

    /// LEB128: seven bits per byte, low bits first, the high bit set on every byte but the last;
    /// small numbers (most histogram counts) take one or two bytes instead of eight.
    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// A count of the items that follow, as a `u64` ([`Reader::count`] reads it back).
    pub(crate) fn count(&mut self, n: usize) {
        self.u64(n as u64);
    }

    /// A `u64` length, then the bytes.
    pub(crate) fn prefixed_bytes(&mut self, bytes: &[u8]) {
        self.count(bytes.len());
        self.raw(bytes);
    }

    /// A string as [`Writer::prefixed_bytes`] of its UTF-8.
    pub(crate) fn prefixed_str(&mut self, s: &str) {
        self.prefixed_bytes(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_and_counts_are_bounded() {
        let mut bytes = 3u64.to_le_bytes().to_vec();
        bytes.extend([7, 8, 9]);
        let mut r = Reader(&bytes);
        assert_eq!(r.count(1), Some(3));
        assert_eq!(r.take(2), Some(&[7, 8][..]));
        assert_eq!(r.u64(), None);
        assert_eq!(r.u8(), Some(9));
        assert_eq!(r.u8(), None);
        let huge = u64::MAX.to_le_bytes();
        assert_eq!(Reader(&huge).count(1), None);
    }

    #[test]
    fn every_field_round_trips_in_its_documented_bytes() {
        let mut out = Vec::new();
        let mut w = Writer(&mut out);
        w.u8(0xab);
        w.u32(0x0403_0201);
        w.u64(0x0807_0605_0403_0201);
        w.f32(-0.0);
        w.f64(f64::from_bits(0x7ff8_0000_0000_0001));
        w.count(2);
        w.prefixed_bytes(b"ab");
        w.prefixed_str("é");
        w.raw(&[1, 2]);
        let mut expected = vec![0xab, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8];
        expected.extend((-0.0f32).to_bits().to_le_bytes());
        expected.extend(0x7ff8_0000_0000_0001u64.to_le_bytes());
        expected.extend(2u64.to_le_bytes());
        expected.extend(2u64.to_le_bytes());
        expected.extend(b"ab");
        expected.extend(2u64.to_le_bytes());
        expected.extend("é".as_bytes());
        expected.extend([1, 2]);
        assert_eq!(out, expected, "the forms the store's entries already hold");

        let mut r = Reader(&out);
        assert_eq!(r.u8(), Some(0xab));
        assert_eq!(r.u32(), Some(0x0403_0201));
        assert_eq!(r.u64(), Some(0x0807_0605_0403_0201));
        assert_eq!(r.f32().map(f32::to_bits), Some((-0.0f32).to_bits()));
        assert_eq!(r.f64().map(f64::to_bits), Some(0x7ff8_0000_0000_0001));
        assert_eq!(r.count(1), Some(2));
        assert_eq!(r.prefixed_bytes(), Some(&b"ab"[..]));
        assert_eq!(r.prefixed_str(), Some("é"));
        assert_eq!(r.take(2), Some(&[1, 2][..]));
        assert!(r.0.is_empty());
    }

    #[test]
    fn prefixed_fields_refuse_short_or_foreign_bytes() {
        let mut out = Vec::new();
        Writer(&mut out).prefixed_bytes(&[0xff, 0xfe]);
        assert_eq!(Reader(&out).prefixed_str(), None, "not UTF-8");
        assert_eq!(Reader(&out[..9]).prefixed_bytes(), None, "cut short");
        let huge = u64::MAX.to_le_bytes();
        assert_eq!(Reader(&huge).prefixed_bytes(), None);
    }

    #[test]
    fn varints_round_trip_at_every_width() {
        let values = [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ];
        let mut bytes = Vec::new();
        let mut w = Writer(&mut bytes);
        for v in values {
            w.varint(v);
        }
        // 1 + 1 + 1 + 2 + 2 + 2 + 3 + 5 + 10 bytes.
        assert_eq!(bytes.len(), 27);
        assert_eq!(&bytes[..5], &[0, 1, 127, 0x80, 0x01]);
        let mut r = Reader(&bytes);
        for v in values {
            assert_eq!(r.varint(), Some(v));
        }
        assert!(r.0.is_empty());
        // Eleven bytes, or a tenth byte with more than the top bit, overflow a u64.
        assert_eq!(Reader(&[0xff; 11]).varint(), None);
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(Reader(&over).varint(), None);
        assert_eq!(Reader(&[0x80]).varint(), None);
    }
}
