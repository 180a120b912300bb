//! The on-disk format of one store entry: a fixed header that lets a reader prove the payload is
//! whole and unmodified, followed by the payload. Pure byte handling; it must not touch files.
//!
//! | offset | bytes | content                                   |
//! |--------|-------|-------------------------------------------|
//! | 0      | 8     | magic `b"QUANTOBJ"`                       |
//! | 8      | 4     | [`FORMAT_VERSION`], u32 little-endian     |
//! | 12     | 32    | blake3 digest of the payload              |
//! | 44     | 8     | payload length in bytes, u64 LE           |
//! | 52     | n     | payload                                   |

use super::digest::Digest;

/// First eight bytes of every entry file.
pub const MAGIC: &[u8; 8] = b"QUANTOBJ";
/// Version of the entry layout above; a reader treats any other version as corrupt (a miss).
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header in bytes.
pub const HEADER_LEN: usize = 52;

/// Why a stored entry was rejected. Any of these makes the entry a miss: the caller recomputes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptReason {
    /// Shorter than the header: a write that never completed (should not survive a rename, but
    /// a disk or a foreign tool can still cut files).
    #[error("entry is truncated ({len} bytes, the header alone has {HEADER_LEN})")]
    Truncated {
        /// Length of the file found.
        len: u64,
    },
    /// The file does not start with the entry magic.
    #[error("entry does not start with the store's magic bytes")]
    BadMagic,
    /// Written by an incompatible version of the entry format.
    #[error("entry format version {found} is not the supported version {FORMAT_VERSION}")]
    UnsupportedFormat {
        /// The version in the header.
        found: u32,
    },
    /// The payload is shorter or longer than the header says.
    #[error("entry payload has {actual} bytes but its header says {expected}")]
    LengthMismatch {
        /// Length recorded in the header.
        expected: u64,
        /// Length actually present.
        actual: u64,
    },
    /// The payload bytes changed after they were written.
    #[error("entry payload digest {actual} does not match its header's {expected}")]
    DigestMismatch {
        /// Digest recorded in the header.
        expected: Digest,
        /// Digest of the bytes found.
        actual: Digest,
    },
    /// The payload is intact but does not decode as the expected type.
    #[error("entry payload does not decode: {0}")]
    Undecodable(String),
}

/// The header to write before `payload`.
pub fn header_for(payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..44].copy_from_slice(Digest::of(payload).as_bytes());
    header[44..52].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header
}

/// Checks a whole entry file and returns its payload (the header is removed in place).
pub fn verify(mut file: Vec<u8>) -> Result<Vec<u8>, CorruptReason> {
    if file.len() < HEADER_LEN {
        return Err(CorruptReason::Truncated {
            len: file.len() as u64,
        });
    }
    if &file[0..8] != MAGIC {
        return Err(CorruptReason::BadMagic);
    }
    let found = u32::from_le_bytes(file[8..12].try_into().expect("4-byte slice"));
    if found != FORMAT_VERSION {
        return Err(CorruptReason::UnsupportedFormat { found });
    }
    let expected_digest = Digest::from_bytes(file[12..44].try_into().expect("32-byte slice"));
    let expected_len = u64::from_le_bytes(file[44..52].try_into().expect("8-byte slice"));
    let actual_len = (file.len() - HEADER_LEN) as u64;
    if actual_len != expected_len {
        return Err(CorruptReason::LengthMismatch {
            expected: expected_len,
            actual: actual_len,
        });
    }
    let actual_digest = Digest::of(&file[HEADER_LEN..]);
    if actual_digest != expected_digest {
        return Err(CorruptReason::DigestMismatch {
            expected: expected_digest,
            actual: actual_digest,
        });
    }
    file.drain(..HEADER_LEN);
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: &[u8]) -> Vec<u8> {
        let mut file = header_for(payload).to_vec();
        file.extend_from_slice(payload);
        file
    }

    #[test]
    fn round_trips() {
        assert_eq!(verify(entry(b"scale")), Ok(b"scale".to_vec()));
        assert_eq!(verify(entry(b"")), Ok(Vec::new()));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let good = entry(b"offset -128");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(verify(bad).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn every_truncation_and_extension_is_detected() {
        let good = entry(b"bitwidth 8");
        for len in 0..good.len() {
            assert!(
                verify(good[..len].to_vec()).is_err(),
                "cut at {len} went unnoticed"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert_eq!(
            verify(longer),
            Err(CorruptReason::LengthMismatch {
                expected: 10,
                actual: 11
            })
        );
    }
}
