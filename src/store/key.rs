//! Store keys: `Kind` (what an entry holds) and `KeyBuilder` (what it was computed from).
//! It owns the byte layout that is hashed into a key; it must not read files, and it offers no
//! way to put a path or a modification time into a key — only content and settings.
//!
//! # Byte layout (stable; changing it means bumping [`SCHEMA_VERSION`])
//!
//! A key is `blake3` of:
//!
//! | bytes                 | content                                             |
//! |-----------------------|-----------------------------------------------------|
//! | 16                    | `b"quant-store-key\0"` (domain separation)          |
//! | 4                     | [`SCHEMA_VERSION`], u32 little-endian               |
//! | 4 + n                 | kind name: length (u32 LE) then UTF-8 bytes         |
//! | 4                     | kind layout version, u32 LE                         |
//! | per field, in order   | tag (u8), name length (u32 LE), name, value         |
//!
//! Field values by tag: `0x01` digest (32 bytes) · `0x02` string (u64 LE length + UTF-8) ·
//! `0x03` bytes (u64 LE length + bytes) · `0x04` u64 (8 bytes LE) · `0x05` i64 (8 bytes LE) ·
//! `0x06` f64 (IEEE-754 bits, 8 bytes LE) · `0x07` bool (1 byte, 0 or 1) · `0x08` JSON (u64 LE
//! length + compact `serde_json` bytes) · `0x09` digest list (u64 LE count + 32 bytes each).
//!
//! Every variable-length part is length-prefixed and every field carries its name and type, so
//! two different field sequences can never produce the same bytes.

use super::digest::Digest;
use serde::Serialize;

/// Version of the key byte layout above. Bumping it orphans every existing entry (gc then
/// removes them), which is the point: a layout change must never alias old keys.
pub const SCHEMA_VERSION: u32 = 1;

/// Domain-separation prefix hashed before everything else in a key.
pub const KEY_DOMAIN: &[u8; 16] = b"quant-store-key\0";

/// What a store entry holds: a directory name under `objects/` plus a layout version.
///
/// The version goes into every key of this kind. Bump it when the cached type's serialized
/// layout changes, or when the code computing the value changes its result: old entries then
/// become unreachable (and gc removes them) instead of being misread or reused wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Kind {
    name: &'static str,
    version: u32,
    fields: &'static [&'static str],
    machine_local: bool,
}

impl Kind {
    /// A kind named `name` (1 to 32 characters of `a-z`, `0-9`, `-`; it becomes a directory
    /// name) whose cached layout is at `version`.
    ///
    /// # Panics
    /// On an invalid name. Kinds are constants written by developers, so in a `const` this is a
    /// compile error rather than a runtime failure.
    pub const fn new(name: &'static str, version: u32) -> Kind {
        let bytes = name.as_bytes();
        assert!(
            !bytes.is_empty() && bytes.len() <= 32,
            "kind name must have 1 to 32 characters"
        );
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            assert!(
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-',
                "kind name may only use a-z, 0-9 and '-'"
            );
            i += 1;
        }
        Kind {
            name,
            version,
            fields: &[],
            machine_local: false,
        }
    }

    /// The same kind, kept out of any remote cache: its entries describe this machine (paths,
    /// the files last written here) or are keyed by names rather than content, so another
    /// machine must not read them.
    pub const fn machine_local(self) -> Kind {
        Kind {
            machine_local: true,
            ..self
        }
    }

    /// Whether entries of this kind may be shared through a remote cache.
    pub const fn is_shared(&self) -> bool {
        !self.machine_local
    }

    /// The same kind, declaring the names of its key fields: a [`KeyBuilder`] for it then
    /// refuses (in debug builds) any other field, so a key cannot quietly grow beyond what the
    /// kind's documentation says it is made of.
    pub const fn keyed_by(self, fields: &'static [&'static str]) -> Kind {
        Kind { fields, ..self }
    }

    /// The name, also the entry directory under `objects/`.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The layout version hashed into every key of this kind.
    pub const fn version(&self) -> u32 {
        self.version
    }

    /// The declared key fields (empty: not declared, any field is accepted).
    pub const fn fields(&self) -> &'static [&'static str] {
        self.fields
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@v{}", self.name, self.version)
    }
}

/// Builds a store key from typed, named fields in the documented byte layout (module docs).
///
/// Field order matters: add fields in one fixed order per kind. There is deliberately no method
/// taking a `Path`, a `SystemTime` or metadata: a key describes *content*, so moving a project or
/// touching a file must not change it. Digest the file's bytes and add the digest instead.
#[derive(Clone)]
pub struct KeyBuilder {
    hasher: blake3::Hasher,
    kind: Kind,
}

const TAG_DIGEST: u8 = 0x01;
const TAG_STR: u8 = 0x02;
const TAG_BYTES: u8 = 0x03;
const TAG_U64: u8 = 0x04;
const TAG_I64: u8 = 0x05;
const TAG_F64: u8 = 0x06;
const TAG_BOOL: u8 = 0x07;
const TAG_JSON: u8 = 0x08;
const TAG_DIGEST_LIST: u8 = 0x09;

impl KeyBuilder {
    /// Starts a key for entries of `kind` (domain prefix, schema version, kind name and version).
    pub fn new(kind: Kind) -> KeyBuilder {
        let mut hasher = blake3::Hasher::new();
        hasher.update(KEY_DOMAIN);
        hasher.update(&SCHEMA_VERSION.to_le_bytes());
        hasher.update(&(kind.name.len() as u32).to_le_bytes());
        hasher.update(kind.name.as_bytes());
        hasher.update(&kind.version.to_le_bytes());
        KeyBuilder { hasher, kind }
    }

    fn field(&mut self, tag: u8, name: &str) {
        debug_assert!(
            self.kind.fields.is_empty() || self.kind.fields.contains(&name),
            "store kind {} declares key fields {:?}, not `{name}`",
            self.kind,
            self.kind.fields,
        );
        self.hasher.update(&[tag]);
        self.hasher.update(&(name.len() as u32).to_le_bytes());
        self.hasher.update(name.as_bytes());
    }

    /// Adds a content digest (of a model, a sample, an override file, another entry's key...).
    pub fn digest(mut self, name: &str, value: &Digest) -> KeyBuilder {
        self.field(TAG_DIGEST, name);
        self.hasher.update(value.as_bytes());
        self
    }

    /// Adds an ordered list of digests; callers sort it first when order must not matter.
    pub fn digests<'a>(
        mut self,
        name: &str,
        values: impl ExactSizeIterator<Item = &'a Digest>,
    ) -> KeyBuilder {
        self.field(TAG_DIGEST_LIST, name);
        self.hasher.update(&(values.len() as u64).to_le_bytes());
        for value in values {
            self.hasher.update(value.as_bytes());
        }
        self
    }

    /// Adds a string setting (a tensor name, a schema name, a backend...).
    pub fn str(mut self, name: &str, value: &str) -> KeyBuilder {
        self.field(TAG_STR, name);
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value.as_bytes());
        self
    }

    /// Adds raw bytes.
    pub fn bytes(mut self, name: &str, value: &[u8]) -> KeyBuilder {
        self.field(TAG_BYTES, name);
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self
    }

    /// Adds an unsigned integer setting (a bitwidth, a bin count...).
    pub fn u64(mut self, name: &str, value: u64) -> KeyBuilder {
        self.field(TAG_U64, name);
        self.hasher.update(&value.to_le_bytes());
        self
    }

    /// Adds a signed integer setting.
    pub fn i64(mut self, name: &str, value: i64) -> KeyBuilder {
        self.field(TAG_I64, name);
        self.hasher.update(&value.to_le_bytes());
        self
    }

    /// Adds a float setting by its exact bits, so `-0.0` and `0.0` (and NaN payloads) differ:
    /// the key must change whenever the computation could.
    pub fn f64(mut self, name: &str, value: f64) -> KeyBuilder {
        self.field(TAG_F64, name);
        self.hasher.update(&value.to_bits().to_le_bytes());
        self
    }

    /// Adds a flag.
    pub fn bool(mut self, name: &str, value: bool) -> KeyBuilder {
        self.field(TAG_BOOL, name);
        self.hasher.update(&[u8::from(value)]);
        self
    }

    /// Adds a settings struct by its compact JSON.
    ///
    /// Stable only for types whose JSON is deterministic: structs, `Vec`, `BTreeMap` — never a
    /// `HashMap`, whose iteration order changes between runs.
    pub fn json<T: Serialize + ?Sized>(
        mut self,
        name: &str,
        value: &T,
    ) -> Result<KeyBuilder, serde_json::Error> {
        let json = serde_json::to_vec(value)?;
        self.field(TAG_JSON, name);
        self.hasher.update(&(json.len() as u64).to_le_bytes());
        self.hasher.update(&json);
        Ok(self)
    }

    /// The finished key.
    pub fn finish(&self) -> Digest {
        Digest::from(self.hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_types_and_order_all_change_the_key() {
        let base = KeyBuilder::new(Kind::new("encodings", 1))
            .u64("bitwidth", 8)
            .str("tensor", "x");
        let renamed = KeyBuilder::new(Kind::new("encodings", 1))
            .u64("bits", 8)
            .str("tensor", "x");
        let retyped = KeyBuilder::new(Kind::new("encodings", 1))
            .i64("bitwidth", 8)
            .str("tensor", "x");
        let reordered = KeyBuilder::new(Kind::new("encodings", 1))
            .str("tensor", "x")
            .u64("bitwidth", 8);
        let other_kind = KeyBuilder::new(Kind::new("artifacts", 1))
            .u64("bitwidth", 8)
            .str("tensor", "x");
        let bumped = KeyBuilder::new(Kind::new("encodings", 2))
            .u64("bitwidth", 8)
            .str("tensor", "x");
        let keys =
            [&base, &renamed, &retyped, &reordered, &other_kind, &bumped].map(|k| k.finish());
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn length_prefixes_prevent_concatenation_collisions() {
        let a = KeyBuilder::new(Kind::new("statistics", 5))
            .str("a", "bc")
            .str("d", "");
        let b = KeyBuilder::new(Kind::new("statistics", 5))
            .str("a", "b")
            .str("cd", "");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn signed_zero_and_float_bits_are_distinct() {
        let pos = KeyBuilder::new(Kind::new("encodings", 1))
            .f64("min", 0.0)
            .finish();
        let neg = KeyBuilder::new(Kind::new("encodings", 1))
            .f64("min", -0.0)
            .finish();
        assert_ne!(pos, neg);
    }

    #[test]
    #[should_panic(expected = "kind name may only use")]
    fn kind_rejects_path_characters() {
        let _ = Kind::new("../escape", 1);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "declares key fields")]
    fn a_kind_with_declared_fields_refuses_others() {
        const DECLARED: Kind = Kind::new("declared", 1).keyed_by(&["tensor"]);
        let _ = KeyBuilder::new(DECLARED)
            .str("tensor", "x")
            .str("path", "/tmp/x");
    }

    #[test]
    fn declared_fields_do_not_change_keys() {
        const DECLARED: Kind = Kind::new("declared", 1).keyed_by(&["tensor"]);
        let plain = KeyBuilder::new(Kind::new("declared", 1))
            .str("tensor", "x")
            .finish();
        assert_eq!(KeyBuilder::new(DECLARED).str("tensor", "x").finish(), plain);
    }
}
