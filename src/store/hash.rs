//! Stable digests of values through their `Hash` implementation: the same bytes in every
//! process, so they can go into store keys (std's `DefaultHasher` is randomly keyed per
//! process).
//!
//! Every integer is fed to blake3 at a fixed width in little-endian order, `usize` and `isize`
//! widened to 64 bits so 32- and 64-bit machines agree. Every run of bytes (a `write`) is
//! prefixed with its length, so two sequences of writes that concatenate to the same bytes —
//! `("ab", "c")` and `("a", "bc")` — still digest differently, whatever a type's `Hash` does.
//!
//! One limit comes from std, not from here: a slice of integers is hashed as one `write` of its
//! in-memory bytes, so for those the digest follows the machine's byte order (and, for `usize`
//! slices, its pointer width). Every platform quant builds for is little-endian and 64-bit.

use std::borrow::BorrowMut;
use std::hash::{Hash, Hasher};

use super::digest::Digest;

/// A `Hasher` that feeds blake3 with fixed-width little-endian integers and length-prefixed
/// byte runs (see the module docs).
///
/// It owns its blake3 state by default ([`StableHasher::new`]), or borrows one
/// ([`StableHasher::over`]) to add a framed value to a digest built by hand.
#[derive(Debug, Clone)]
pub struct StableHasher<H: BorrowMut<blake3::Hasher> = blake3::Hasher>(H);

impl StableHasher {
    /// A hasher with a fresh blake3 state.
    pub fn new() -> StableHasher {
        StableHasher(blake3::Hasher::new())
    }
}

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher::new()
    }
}

impl<'a> StableHasher<&'a mut blake3::Hasher> {
    /// A hasher that writes into `hasher`, which keeps everything written when this is dropped.
    pub fn over(hasher: &'a mut blake3::Hasher) -> StableHasher<&'a mut blake3::Hasher> {
        StableHasher(hasher)
    }
}

impl<H: BorrowMut<blake3::Hasher>> StableHasher<H> {
    /// The digest of everything written so far.
    pub fn digest(&self) -> Digest {
        Digest::from(self.0.borrow().finalize())
    }

    /// The blake3 state.
    pub fn into_inner(self) -> H {
        self.0
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0.borrow_mut().update(bytes);
    }
}

impl<H: BorrowMut<blake3::Hasher>> Hasher for StableHasher<H> {
    fn finish(&self) -> u64 {
        let hash = self.0.borrow().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        // The frame: `write_str` and `write_length_prefix`, which would let a hasher frame
        // strings and slices itself, cannot be overridden on stable Rust.
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    fn write_u8(&mut self, n: u8) {
        self.update(&[n]);
    }

    fn write_u16(&mut self, n: u16) {
        self.update(&n.to_le_bytes());
    }

    fn write_u32(&mut self, n: u32) {
        self.update(&n.to_le_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.update(&n.to_le_bytes());
    }

    fn write_u128(&mut self, n: u128) {
        self.update(&n.to_le_bytes());
    }

    fn write_usize(&mut self, n: usize) {
        // Widened so 32- and 64-bit machines agree.
        self.update(&(n as u64).to_le_bytes());
    }

    fn write_i8(&mut self, n: i8) {
        self.write_u8(n as u8);
    }

    fn write_i16(&mut self, n: i16) {
        self.write_u16(n as u16);
    }

    fn write_i32(&mut self, n: i32) {
        self.write_u32(n as u32);
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    fn write_i128(&mut self, n: i128) {
        self.write_u128(n as u128);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as i64 as u64);
    }
}

/// The blake3 digest of `value` through its `Hash` implementation, identical across runs and
/// machines (see the module docs). For store key fields that are settings or overrides (types
/// the library hashes but does not serialize). A change to a type's `Hash` only makes old
/// entries unreachable; it can never make a key match a different value.
pub fn stable_digest<T: Hash + ?Sized>(value: &T) -> Digest {
    let mut hasher = StableHasher::new();
    value.hash(&mut hasher);
    hasher.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenations_of_the_same_bytes_digest_differently() {
        assert_ne!(stable_digest(&("ab", "c")), stable_digest(&("a", "bc")));
        assert_ne!(
            stable_digest(&(String::from("ab"), String::from("c"))),
            stable_digest(&(String::from("a"), String::from("bc")))
        );
        assert_ne!(
            stable_digest(&(&b"ab"[..], &b"c"[..])),
            stable_digest(&(&b"a"[..], &b"bc"[..]))
        );
        assert_ne!(
            stable_digest(&vec!["ab", "c"]),
            stable_digest(&vec!["a", "bc"])
        );
        // Raw writes, as a hand-written `Hash` might make them.
        let raw = |parts: &[&[u8]]| {
            let mut hasher = StableHasher::new();
            for part in parts {
                hasher.write(part);
            }
            hasher.digest()
        };
        assert_ne!(raw(&[b"ab", b"c"]), raw(&[b"a", b"bc"]));
        assert_ne!(raw(&[b"abc"]), raw(&[b"abc", b""]));
    }

    #[test]
    fn integers_are_fixed_width_little_endian() {
        let mut by_hand = blake3::Hasher::new();
        by_hand.update(&[7]);
        by_hand.update(&7u32.to_le_bytes());
        by_hand.update(&7u64.to_le_bytes());
        by_hand.update(&(-7i64).to_le_bytes());
        by_hand.update(&7u128.to_le_bytes());
        assert_eq!(
            stable_digest(&(7u8, 7u32, 7usize, -7isize, 7u128)),
            Digest::from(by_hand.finalize())
        );
        assert_ne!(stable_digest(&7u32), stable_digest(&7u64));
    }

    #[test]
    fn a_borrowed_hasher_writes_into_its_owner() {
        let mut owned = StableHasher::new();
        "tensor".hash(&mut owned);
        42u64.hash(&mut owned);
        let mut outer = blake3::Hasher::new();
        "tensor".hash(&mut StableHasher::over(&mut outer));
        42u64.hash(&mut StableHasher::over(&mut outer));
        assert_eq!(Digest::from(outer.finalize()), owned.digest());
        assert_eq!(stable_digest("tensor"), stable_digest("tensor"));
        assert_ne!(stable_digest("tensor"), stable_digest("tensors"));
    }
}
