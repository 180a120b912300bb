//! The persistent store seen from outside: round trips, corruption, concurrency across threads
//! and processes, SIGKILL during writes, LRU gc, `clean`, and key stability.
//!
//! Some tests re-run this test binary as a child process (`child_process_entry`) to get real
//! concurrent processes and a writer that can be killed mid-write.

use quant::store::{
    CorruptReason, Digest, GetOutcome, HEADER_LEN, KEY_DOMAIN, KeyBuilder, Kind, SCHEMA_VERSION,
    STALE_TEMP_AGE, Store, StoreError, parse_size,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The kinds these tests store entries of.
const STATS: Kind = Kind::new("statistics", 5);
const ENCODINGS: Kind = Kind::new("encodings", 1);
const ARTIFACTS: Kind = Kind::new("artifacts", 1);

const ROLE_ENV: &str = "QUANT_STORE_TEST_ROLE";
const DIR_ENV: &str = "QUANT_STORE_TEST_DIR";
const SEED_ENV: &str = "QUANT_STORE_TEST_SEED";

fn key(i: u64) -> Digest {
    KeyBuilder::new(STATS).u64("sample", i).finish()
}

/// Deterministic payload for key `i`, of a size that varies with `i` between `min` and `max`.
fn payload(i: u64, min: usize, max: usize) -> Vec<u8> {
    let len = min + (i as usize * 7919) % (max - min + 1);
    let mut bytes = vec![0u8; len];
    let mut hasher = blake3::Hasher::new();
    hasher.update(&i.to_le_bytes());
    hasher.finalize_xof().fill(&mut bytes);
    bytes
}

fn set_mtime(path: &Path, time: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(time)
        .unwrap();
}

fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

/// Every file below `objects/<kind>/`, split into (entries, temp files).
fn files_of(store: &Store, kind: Kind) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut entries = Vec::new();
    let mut temps = Vec::new();
    let kind_dir = store.dir().join("objects").join(kind.name());
    for entry in walkdir::WalkDir::new(kind_dir).into_iter().flatten() {
        if entry.file_type().is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp-") {
                temps.push(entry.into_path());
            } else {
                entries.push(entry.into_path());
            }
        }
    }
    (entries, temps)
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Encoding {
    bitwidth: u8,
    scale: f64,
    offset: i64,
}

#[test]
fn round_trips_bytes_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join(".quant")).unwrap();
    assert_eq!(store.get(STATS, &key(1)).unwrap(), GetOutcome::Miss);

    store.put(STATS, &key(1), b"histogram").unwrap();
    assert_eq!(
        store.get(STATS, &key(1)).unwrap(),
        GetOutcome::Hit(b"histogram".to_vec())
    );
    // The kind is part of the location: the same key under another kind is another entry.
    assert_eq!(store.get(ENCODINGS, &key(1)).unwrap(), GetOutcome::Miss);

    let encoding = Encoding {
        bitwidth: 8,
        scale: 0.0123,
        offset: -128,
    };
    let encoding_key = KeyBuilder::new(ENCODINGS)
        .str("tensor", "conv_3.tmp_0")
        .finish();
    store.put_json(ENCODINGS, &encoding_key, &encoding).unwrap();
    let read: GetOutcome<Encoding> = store.get_json(ENCODINGS, &encoding_key).unwrap();
    assert_eq!(read, GetOutcome::Hit(encoding));

    assert!(dir.path().join(".quant/CACHEDIR.TAG").is_file());

    // Without fsync the same bytes land in the same place; only power-loss durability differs.
    let unsynced = Store::open(dir.path().join(".quant"))
        .unwrap()
        .with_fsync(false);
    unsynced.put(STATS, &key(2), b"minmax").unwrap();
    assert_eq!(
        store.get(STATS, &key(2)).unwrap(),
        GetOutcome::Hit(b"minmax".to_vec())
    );
    let (mut entries, temps) = files_of(&store, STATS);
    entries.sort();
    let mut expected = vec![
        store.entry_path(STATS, &key(1)),
        store.entry_path(STATS, &key(2)),
    ];
    expected.sort();
    assert_eq!(entries, expected);
    assert!(
        temps.is_empty(),
        "a finished put leaves no temp file: {temps:?}"
    );
}

#[test]
fn entry_file_has_the_documented_header() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put(ARTIFACTS, &key(2), b"{}\n").unwrap();
    let file = fs::read(store.entry_path(ARTIFACTS, &key(2))).unwrap();
    assert_eq!(file.len(), HEADER_LEN + 3);
    assert_eq!(&file[0..8], b"QUANTOBJ");
    assert_eq!(&file[8..12], &1u32.to_le_bytes());
    assert_eq!(&file[12..44], blake3::hash(b"{}\n").as_bytes());
    assert_eq!(&file[44..52], &3u64.to_le_bytes());
    assert_eq!(&file[52..], b"{}\n");
    let hex = key(2).to_hex();
    assert_eq!(
        store.entry_path(ARTIFACTS, &key(2)),
        dir.path()
            .join("objects/artifacts")
            .join(&hex[..2])
            .join(&hex[2..])
    );
}

/// What a build does with the store: use a hit, otherwise compute, warn about corruption, put.
fn get_or_compute(
    store: &Store,
    i: u64,
    computed: &mut u32,
    warnings: &mut Vec<String>,
) -> Vec<u8> {
    match store.get(STATS, &key(i)).unwrap() {
        GetOutcome::Hit(bytes) => bytes,
        outcome => {
            if let Some(corruption) = outcome.corruption() {
                warnings.push(corruption.to_string());
            }
            *computed += 1;
            let bytes = payload(i, 100, 200);
            store.put(STATS, &key(i), &bytes).unwrap();
            bytes
        }
    }
}

#[test]
fn flipped_byte_is_detected_reported_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut computed, mut warnings) = (0, Vec::new());
    let first = get_or_compute(&store, 7, &mut computed, &mut warnings);
    assert_eq!((computed, warnings.len()), (1, 0));

    let path = store.entry_path(STATS, &key(7));
    let mut file = fs::read(&path).unwrap();
    file[HEADER_LEN + 40] ^= 0x10;
    fs::write(&path, &file).unwrap();

    let outcome = store.get(STATS, &key(7)).unwrap();
    let corruption = outcome
        .corruption()
        .expect("a flipped payload byte must be detected");
    assert_eq!(corruption.path, path);
    assert!(matches!(
        corruption.reason,
        CorruptReason::DigestMismatch { .. }
    ));
    let moved = corruption
        .quarantined
        .as_ref()
        .expect("moved to quarantine");
    assert_eq!(
        fs::read(moved).unwrap(),
        file,
        "the damaged bytes are kept for inspection"
    );
    assert!(
        !path.exists(),
        "the damaged entry no longer sits under its key"
    );
    let message = corruption.to_string();
    assert!(
        message.contains("is corrupt") && message.contains("will be recomputed"),
        "{message}"
    );

    // The next lookup is a plain miss: the caller recomputes, puts, and hits from then on.
    let again = get_or_compute(&store, 7, &mut computed, &mut warnings);
    assert_eq!(again, first);
    assert_eq!(computed, 2);
    assert_eq!(
        get_or_compute(&store, 7, &mut computed, &mut warnings),
        first
    );
    assert_eq!(computed, 2);
}

#[test]
fn corrupt_entry_in_a_build_loop_warns_once_and_recomputes_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut computed, mut warnings) = (0, Vec::new());
    for i in 0..10 {
        get_or_compute(&store, i, &mut computed, &mut warnings);
    }
    fs::write(store.entry_path(STATS, &key(4)), b"QUANTOBJ garbage").unwrap();
    computed = 0;
    for i in 0..10 {
        assert_eq!(
            get_or_compute(&store, i, &mut computed, &mut warnings),
            payload(i, 100, 200)
        );
    }
    assert_eq!(computed, 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn truncated_entries_are_misses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = payload(3, 5000, 5000);
    for (cut, expected) in [
        (HEADER_LEN + 1000, "length"),
        (HEADER_LEN, "length"),
        (10, "truncated"),
        (0, "truncated"),
    ] {
        store.put(STATS, &key(3), &bytes).unwrap();
        let path = store.entry_path(STATS, &key(3));
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut as u64)
            .unwrap();
        let outcome = store.get(STATS, &key(3)).unwrap();
        let reason = &outcome.corruption().expect("truncation detected").reason;
        match expected {
            "length" => assert_eq!(
                reason,
                &CorruptReason::LengthMismatch {
                    expected: 5000,
                    actual: (cut - HEADER_LEN) as u64
                }
            ),
            _ => assert_eq!(reason, &CorruptReason::Truncated { len: cut as u64 }),
        }
        assert_eq!(store.get(STATS, &key(3)).unwrap(), GetOutcome::Miss);
    }
}

#[test]
fn intact_json_of_another_layout_counts_as_corrupt() {
    #[derive(Serialize)]
    struct OldLayout {
        bits: u8,
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let k = key(11);
    store
        .put_json(ENCODINGS, &k, &OldLayout { bits: 8 })
        .unwrap();
    let outcome: GetOutcome<Encoding> = store.get_json(ENCODINGS, &k).unwrap();
    let corruption = outcome
        .corruption()
        .expect("undecodable payload is corrupt");
    assert!(matches!(corruption.reason, CorruptReason::Undecodable(_)));
    let next: GetOutcome<Encoding> = store.get_json(ENCODINGS, &k).unwrap();
    assert_eq!(next, GetOutcome::Miss);
}

#[test]
fn threads_hammering_the_same_keys_never_read_corrupt_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let hits = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..8u64 {
            let (store, hits) = (&store, &hits);
            scope.spawn(move || {
                for round in 0..150u64 {
                    let i = (thread * 31 + round * 7) % 12;
                    match store.get(STATS, &key(i)).unwrap() {
                        GetOutcome::Hit(bytes) => {
                            assert_eq!(bytes, payload(i, 1, 64 << 10), "key {i}");
                            hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        GetOutcome::Miss => {}
                        GetOutcome::Corrupt(c) => panic!("concurrent writers produced {c}"),
                    }
                    store.put(STATS, &key(i), &payload(i, 1, 64 << 10)).unwrap();
                }
            });
        }
    });
    assert!(
        hits.into_inner() > 0,
        "readers never raced a finished entry"
    );
    let (entries, temps) = files_of(&store, STATS);
    assert_eq!(entries.len(), 12);
    assert!(temps.is_empty(), "{temps:?}");
}

fn spawn_child(role: &str, dir: &Path, seed: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE_ENV, role)
        .env(DIR_ENV, dir)
        .env(SEED_ENV, seed.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Entry point of the child processes the tests below start; does nothing in a normal run.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let store = Store::open(std::env::var_os(DIR_ENV).unwrap()).unwrap();
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    match role.as_str() {
        "hammer" => {
            for round in 0..300u64 {
                let i = (seed * 13 + round * 3) % 10;
                match store.get(STATS, &key(i)).unwrap() {
                    GetOutcome::Hit(bytes) => assert_eq!(bytes, payload(i, 1, 256 << 10)),
                    GetOutcome::Miss => {}
                    GetOutcome::Corrupt(c) => panic!("process {seed} read {c}"),
                }
                store
                    .put(STATS, &key(i), &payload(i, 1, 256 << 10))
                    .unwrap();
            }
        }
        "writer" => {
            // Runs until killed: large entries, overlapping the keys of earlier rounds so the
            // kill also lands on renames over existing entries.
            for n in 0.. {
                let i = (seed * 3 + n) % 40;
                store
                    .put(STATS, &key(i), &payload(i, 256 << 10, 4 << 20))
                    .unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn processes_hammering_the_same_keys_never_read_corrupt_data() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..3)
        .map(|seed| spawn_child("hammer", dir.path(), seed))
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let store = Store::open(dir.path()).unwrap();
    let (entries, temps) = files_of(&store, STATS);
    assert_eq!(entries.len(), 10);
    assert!(temps.is_empty(), "{temps:?}");
    for i in 0..10 {
        assert_eq!(
            store.get(STATS, &key(i)).unwrap(),
            GetOutcome::Hit(payload(i, 1, 256 << 10))
        );
    }
}

#[test]
fn sigkill_during_writes_leaves_only_valid_entries() {
    let dir = tempfile::tempdir().unwrap();
    let keys: BTreeMap<Digest, u64> = (0..40).map(|i| (key(i), i)).collect();
    let mut stale_temps = 0;
    let mut rounds = 0;
    // Keep killing until a kill has provably landed mid-write (a temp file left behind).
    while rounds < 6 || (stale_temps == 0 && rounds < 40) {
        let mut child = spawn_child("writer", dir.path(), rounds);
        let delay = 30 + random_u64() % 300;
        std::thread::sleep(Duration::from_millis(delay));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the writer stopped on its own"
        );
        child.kill().unwrap(); // SIGKILL on Unix: no destructors, no cleanup.
        child.wait().unwrap();
        rounds += 1;
        let store = Store::open(dir.path()).unwrap();
        stale_temps = files_of(&store, STATS).1.len();
    }
    assert!(
        stale_temps > 0,
        "no kill in {rounds} rounds landed mid-write"
    );
    eprintln!("{rounds} writers killed, {stale_temps} temp files left behind");

    let store = Store::open(dir.path()).unwrap();
    let (entries, temps) = files_of(&store, STATS);
    assert!(!entries.is_empty());
    for path in &entries {
        let name = format!(
            "{}{}",
            path.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy(),
            path.file_name().unwrap().to_string_lossy()
        );
        let i = keys[&name.parse::<Digest>().unwrap()];
        assert_eq!(
            store.get(STATS, &key(i)).unwrap(),
            GetOutcome::Hit(payload(i, 256 << 10, 4 << 20)),
            "entry {i} after {rounds} kills"
        );
    }
    // Still usable, and gc removes the dead writers' temp files only once they are stale.
    store.put(STATS, &key(1000), b"after the crash").unwrap();
    assert!(store.get(STATS, &key(1000)).unwrap().is_hit());
    assert_eq!(store.gc(u64::MAX).unwrap().stale_temp_files_removed, 0);
    let long_ago = SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(60);
    for temp in &temps {
        set_mtime(temp, long_ago);
    }
    let report = store.gc(u64::MAX).unwrap();
    assert_eq!(report.stale_temp_files_removed, temps.len() as u64);
    assert_eq!(report.entries_kept, entries.len() as u64 + 1);
    assert!(files_of(&store, STATS).1.is_empty());
}

#[test]
fn gc_evicts_least_recently_used_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let entry_size = (HEADER_LEN + 1000) as u64;
    let start = SystemTime::now() - Duration::from_secs(3600);
    for i in 0..5u64 {
        store
            .put(ENCODINGS, &key(i), &payload(i, 1000, 1000))
            .unwrap();
        // Entry i was last used i minutes after `start`: 0 is the oldest.
        set_mtime(
            &store.entry_path(ENCODINGS, &key(i)),
            start + Duration::from_secs(60 * i),
        );
    }
    // Reading entry 0 makes it the most recently used.
    assert!(store.get(ENCODINGS, &key(0)).unwrap().is_hit());

    // A fresh temp file is a write in progress and survives; a quarantined entry does not.
    let shard = store
        .entry_path(ENCODINGS, &key(0))
        .parent()
        .unwrap()
        .to_path_buf();
    fs::write(shard.join(".tmp-1-2-3"), b"in flight").unwrap();
    fs::write(store.entry_path(ENCODINGS, &key(4)), b"bad").unwrap();
    assert!(
        store
            .get(ENCODINGS, &key(4))
            .unwrap()
            .corruption()
            .is_some()
    );

    let report = store.gc(3 * entry_size - 1).unwrap();
    assert_eq!(report.entries_removed, 2);
    assert_eq!(report.bytes_removed, 2 * entry_size);
    assert_eq!(report.entries_kept, 2);
    assert_eq!(report.bytes_kept, 2 * entry_size);
    assert_eq!(report.quarantined_removed, 1);
    assert_eq!(report.stale_temp_files_removed, 0);
    let alive: Vec<u64> = (0..5)
        .filter(|&i| store.get(ENCODINGS, &key(i)).unwrap().is_hit())
        .collect();
    assert_eq!(
        alive,
        vec![0, 3],
        "1 and 2 were least recently used; 4 was corrupt"
    );
    assert!(shard.join(".tmp-1-2-3").exists());

    // Under the limit: nothing to do.
    let report = store.gc(u64::MAX).unwrap();
    assert_eq!((report.entries_removed, report.entries_kept), (0, 2));
}

#[test]
fn clean_removes_the_store_and_refuses_other_folders() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join(".quant");
    let store = Store::open(&store_dir).unwrap();
    store.put(ARTIFACTS, &key(1), &[0u8; 100]).unwrap();
    let report = store.clean().unwrap();
    assert_eq!(report.files_removed, 2, "the entry and CACHEDIR.TAG");
    assert!(report.bytes_removed >= 100 + HEADER_LEN as u64);
    assert!(!store_dir.exists());
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing left beside it"
    );
    assert_eq!(quant::store::clean(&store_dir).unwrap().files_removed, 0);

    let precious = dir.path().join("home");
    fs::create_dir(&precious).unwrap();
    fs::write(precious.join("thesis.tex"), b"...").unwrap();
    let refused = quant::store::clean(&precious).unwrap_err();
    assert!(matches!(refused, StoreError::NotAStore { .. }));
    assert!(refused.to_string().contains("not a quant store"));
    fs::write(
        precious.join("CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    assert!(matches!(
        quant::store::clean(&precious),
        Err(StoreError::NotAStore { .. })
    ));
    assert!(precious.join("thesis.tex").exists());
}

#[test]
fn parse_size_reads_cli_spellings() {
    assert_eq!(parse_size("500M").unwrap(), 500 * 1024 * 1024);
    assert_eq!(parse_size("2G").unwrap(), 2 * 1024 * 1024 * 1024);
    assert_eq!(parse_size("10k").unwrap(), 10240);
    let err = parse_size("2 gigabytes").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown size unit `gigabytes`; use K, M, G or T (powers of 1024)"
    );
}

/// The documented byte layout, built by hand: if this and `KeyBuilder` ever disagree, every
/// store in the world was silently invalidated (or worse, aliased).
#[test]
fn keys_follow_the_documented_layout_and_never_change() {
    let model = Digest::of(b"model bytes");
    // A fixed kind and version, not `STATS`: that one's version moves with its payload.
    let built = KeyBuilder::new(Kind::new("statistics", 1))
        .digest("model", &model)
        .str("tensor", "conv_3.tmp_0")
        .u64("bins", 512)
        .f64("percentile", 99.99)
        .bool("symmetric", true)
        .finish();

    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"quant-store-key\0");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&10u32.to_le_bytes());
    bytes.extend_from_slice(b"statistics");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    let mut field = |tag: u8, name: &str, value: &[u8]| {
        bytes.push(tag);
        bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(value);
    };
    field(0x01, "model", blake3::hash(b"model bytes").as_bytes());
    field(
        0x02,
        "tensor",
        &[&12u64.to_le_bytes()[..], b"conv_3.tmp_0"].concat(),
    );
    field(0x04, "bins", &512u64.to_le_bytes());
    field(0x06, "percentile", &99.99f64.to_bits().to_le_bytes());
    field(0x07, "symmetric", &[1]);

    assert_eq!(KEY_DOMAIN, b"quant-store-key\0");
    assert_eq!(SCHEMA_VERSION, 1);
    assert_eq!(built.to_hex(), blake3::hash(&bytes).to_hex().as_str());
    assert_eq!(
        built.to_hex(),
        "6676b9bac559a6a667dea3607a0f21fd5e2a5966a78bb997469deb654f257d02"
    );
}
