//! `Digest`: the 32-byte blake3 content digest used for every store key and entry checksum.
//! It owns hashing and hex formatting only; it must not know what the digested bytes mean.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A blake3 digest (32 bytes). Displayed as 64 lowercase hex characters.
///
/// Ordered and hashable so it can key maps deterministically; serialized as its hex string so
/// it reads the same in JSON reports and in the store's file names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Number of bytes in a digest.
    pub const LEN: usize = 32;

    /// The blake3 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps raw digest bytes (e.g. read back from an entry header).
    pub const fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The full 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The first 12 hex characters: enough to tell entries apart in messages and `--explain`.
    pub fn short(&self) -> String {
        let mut hex = self.to_string();
        hex.truncate(12);
        hex
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestParseError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(DigestParseError::Length(bytes.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let high = hex_value(pair[0]).ok_or(DigestParseError::Character(2 * i))?;
            let low = hex_value(pair[1]).ok_or(DigestParseError::Character(2 * i + 1))?;
            out[i] = (high << 4) | low;
        }
        Ok(Digest(out))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl From<blake3::Hash> for Digest {
    fn from(hash: blake3::Hash) -> Digest {
        Digest(*hash.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Digest, DigestParseError> {
        Digest::from_hex(s)
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestParseError {
    /// A digest is exactly 64 hex characters.
    #[error("a digest has 64 hex characters, found {0}")]
    Length(usize),
    /// A character outside `0-9a-fA-F`.
    #[error("character {0} of the digest is not a hex digit")]
    Character(usize),
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Digest, D::Error> {
        let hex = String::deserialize(deserializer)?;
        Digest::from_hex(&hex).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_matches_blake3() {
        let digest = Digest::of(b"abc");
        assert_eq!(digest.to_hex(), blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(Digest::from_hex(&digest.to_hex()), Ok(digest));
        assert_eq!(
            Digest::from_hex(&digest.to_hex().to_uppercase()),
            Ok(digest)
        );
        assert_eq!(digest.short().len(), 12);
    }

    #[test]
    fn rejects_malformed_hex() {
        assert_eq!(Digest::from_hex("ab"), Err(DigestParseError::Length(2)));
        let mut bad = "0".repeat(64);
        bad.replace_range(5..6, "g");
        assert_eq!(Digest::from_hex(&bad), Err(DigestParseError::Character(5)));
    }

    #[test]
    fn serializes_as_hex_string() {
        let digest = Digest::of(b"");
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
    }
}
