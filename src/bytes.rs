//! A reader of little-endian byte forms, shared by the store payloads the engine writes and the
//! evaluation traces: every method is `None` on bytes that end too early, so damaged bytes are a
//! miss, never a panic or a huge allocation.
//!
//! It owns only the primitive reads; each byte form adds its own reads in its module.

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

    /// One byte.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// A little-endian `u64`.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A count of items each at least `min_size` bytes long, checked against what is left so a
    /// damaged count cannot ask for a huge allocation.
    pub(crate) fn count(&mut self, min_size: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n <= self.0.len() / min_size.max(1)).then_some(n)
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
}
