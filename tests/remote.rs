//! The remote cache against a real nginx (WebDAV PUT) started on loopback by each test: two
//! clones with separate stores share one remote; a killed server, a corrupt remote entry,
//! rejected uploads and a read-only client each leave a successful build with a clean build's
//! outputs; sharded calibration merges to the unsharded outputs; no credential is ever printed
//! and nothing is written outside the store and the output folder.

mod common;

mod nginx {
    use std::collections::BTreeMap;
    use std::fs;
    use std::net::TcpListener;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use crate::common::{quant_bin, skip_or_fail};

    /// An nginx started for one test, stopped (with its workers) when dropped.
    pub struct Nginx {
        child: Option<Child>,
        /// Its temporary folder (config, logs, and the served root `www/`).
        pub dir: tempfile::TempDir,
        /// The port on 127.0.0.1.
        pub port: u16,
    }

    /// Where the served tree lives, relative to `www/`: `cache/` accepts PUT (WebDAV), `put500/`
    /// answers 500 to every PUT, `put403/` refuses PUT with 403; all serve GET and HEAD from disk.
    const LOCATIONS: &str = r#"
        location /cache/ { dav_methods PUT; create_full_put_path on; }
        location /put500/ { if ($request_method = PUT) { return 500; } }
        location /put403/ { limit_except GET HEAD { deny all; } }
    "#;

    impl Nginx {
        /// Starts nginx, or prints a skip (fails under `QUANT_REQUIRE_FIXTURES`) when it is not
        /// installed.
        #[track_caller]
        pub fn start() -> Option<Nginx> {
            let Some(binary) = nginx_binary() else {
                skip_or_fail("nginx is not installed (`apt-get install -y nginx`; .ci/run does)");
                return None;
            };
            let dir = tempfile::tempdir().unwrap();
            for sub in ["www/cache", "www/put500", "www/put403", "tmp"] {
                fs::create_dir_all(dir.path().join(sub)).unwrap();
            }
            let port = free_port();
            let d = dir.path().display();
            // Started as root, nginx's workers drop to `user`; the temporary root is private to
            // whoever runs the test, so the workers must run as that user to write it.
            let user = if unsafe_geteuid() == 0 {
                "user root root;"
            } else {
                ""
            };
            let config = format!(
                "{user}\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp/body;\n  \
                 proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n  \
                 uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n  \
                 client_max_body_size 0;\n  server {{\n    listen 127.0.0.1:{port};\n    \
                 root {d}/www;\n{LOCATIONS}  }}\n}}\n"
            );
            let conf = dir.path().join("nginx.conf");
            fs::write(&conf, config).unwrap();
            let child = Command::new(binary)
                .arg("-c")
                .arg(&conf)
                .arg("-p")
                .arg(dir.path())
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                // Its own process group, so stopping it takes the workers too.
                .process_group(0)
                .spawn()
                .expect("nginx starts");
            let nginx = Nginx {
                child: Some(child),
                dir,
                port,
            };
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "nginx did not listen on {port}: {}",
                    fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(nginx)
        }

        /// `http://127.0.0.1:PORT/<location>`.
        pub fn url(&self, location: &str) -> String {
            format!("http://127.0.0.1:{}/{location}", self.port)
        }

        /// The folder a location serves.
        pub fn root(&self, location: &str) -> PathBuf {
            self.dir.path().join("www").join(location)
        }

        /// Kills nginx and its workers at once (SIGKILL to its process group).
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let group = -(child.id() as i32);
                Command::new("kill")
                    .args(["-KILL", "--", &group.to_string()])
                    .status()
                    .unwrap();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Nginx {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn nginx_binary() -> Option<PathBuf> {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }

    fn unsafe_geteuid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// One `quant build --json` run: its summary and its stderr.
    pub struct Run {
        pub summary: serde_json::Value,
        pub stderr: String,
        pub stdout: String,
        pub success: bool,
    }

    impl Run {
        pub fn count(&self, key: &str) -> u64 {
            self.summary[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no `{key}` in {}", self.summary))
        }
    }

    /// `quant build ROOT --json` with its own store and `env` (e.g. `QUANT_REMOTE_CACHE`).
    pub fn build(root: &Path, store: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = Command::new(quant_bin());
        command
            .arg("build")
            .arg(root)
            .arg("--json")
            .args(args)
            .env("QUANT_CACHE_DIR", store)
            .env_remove("QUANT_REMOTE_CACHE");
        for (key, value) in env {
            command.env(key, value);
        }
        finish(command.output().unwrap())
    }

    pub fn finish(output: Output) -> Run {
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let summary = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
        Run {
            summary,
            stderr,
            stdout,
            success: output.status.success(),
        }
    }

    /// Every file under `dir` (relative path → bytes).
    pub fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        if dir.exists() {
            for entry in walkdir::WalkDir::new(dir) {
                let entry = entry.unwrap();
                if entry.file_type().is_file() {
                    let relative = entry.path().strip_prefix(dir).unwrap().to_path_buf();
                    out.insert(relative, fs::read(entry.path()).unwrap());
                }
            }
        }
        out
    }

    /// The files of a project's outputs (`quant-out/`), which must exist.
    pub fn outputs(project: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let out = tree(&project.join("quant-out"));
        assert!(!out.is_empty(), "no outputs under {}", project.display());
        out
    }
}

use std::fs;
use std::path::Path;

use common::{EXAMPLE, copy_tree};
use nginx::{Nginx, build, outputs, tree};

/// A copy of the example pipeline in a fresh folder, with its own store beside it.
fn example_clone(parent: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = parent.join(name);
    copy_tree(Path::new(EXAMPLE), &root);
    (root, parent.join(format!("{name}-store")))
}

/// The example built with no remote at all: the outputs every other build must reproduce.
fn clean_outputs(parent: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Vec<u8>> {
    let (root, store) = example_clone(parent, "clean");
    let run = build(&root, &store, &[], &[]);
    assert!(run.success, "{}", run.stderr);
    outputs(&root)
}

fn remote_env(url: &str) -> [(&'static str, &str); 1] {
    [("QUANT_REMOTE_CACHE", url)]
}

#[test]
fn a_second_clone_builds_from_the_remote_without_running_a_sample() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cache");
    let (a, a_store) = example_clone(tmp.path(), "a");
    let cold = build(&a, &a_store, &[], &remote_env(&url));
    assert!(cold.success, "{}", cold.stderr);
    assert_eq!(cold.count("samples_run"), 8);
    assert_eq!(cold.count("remote_errors"), 0, "{}", cold.stderr);
    assert!(cold.count("bytes_uploaded") > 0);
    let uploaded = tree(&server.root("cache"));
    assert!(
        uploaded.keys().any(|p| p.starts_with("statistics")),
        "no statistics uploaded: {:?}",
        uploaded.keys().take(5).collect::<Vec<_>>()
    );
    // Machine-local kinds stay home.
    for local in [
        "file-stamps",
        "unit-state",
        "build-record",
        "eval-sim-traces",
    ] {
        assert!(
            !uploaded.keys().any(|p| p.starts_with(local)),
            "{local} entries were uploaded"
        );
    }

    let (b, b_store) = example_clone(tmp.path(), "b");
    let warm = build(&b, &b_store, &["--remote-cache", &url], &[]);
    assert!(warm.success, "{}", warm.stderr);
    assert_eq!(warm.count("samples_run"), 0, "{}", warm.summary);
    assert!(warm.count("remote_hits") > 0);
    assert_eq!(warm.count("remote_errors"), 0, "{}", warm.stderr);
    assert_eq!(warm.count("evaluations_run"), 0, "{}", warm.summary);
    assert!(warm.count("bytes_downloaded") > 0);
    assert_eq!(outputs(&a), outputs(&b));
    // What B found it kept: a third build of B needs the remote no more.
    assert!(
        tree(&b_store)
            .keys()
            .any(|p| p.starts_with("objects/statistics")
                || p.starts_with("objects/merged-statistics"))
    );
}

#[test]
fn a_server_killed_mid_build_leaves_a_clean_build() {
    let Some(mut server) = Nginx::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let expected = clean_outputs(tmp.path());
    let (root, store) = example_clone(tmp.path(), "killed");
    let child = std::process::Command::new(common::quant_bin())
        .args(["build", "--json", "-j", "1"])
        .arg(&root)
        .env("QUANT_CACHE_DIR", &store)
        .env("QUANT_REMOTE_CACHE", server.url("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server as soon as the build has uploaded something: it is mid-build then.
    let started = std::time::Instant::now();
    while tree(&server.root("cache")).is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "no upload"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    server.kill();
    let run = nginx::finish(child.wait_with_output().unwrap());
    assert!(run.success, "{}", run.stderr);
    assert!(run.count("remote_errors") >= 1, "{}", run.summary);
    let warnings = run.stderr.matches("remote cache").count();
    assert_eq!(warnings, 1, "one warning, then local: {}", run.stderr);
    assert_eq!(outputs(&root), expected);
}

#[test]
fn an_unreachable_remote_is_one_warning_and_a_local_build() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = clean_outputs(tmp.path());
    let (root, store) = example_clone(tmp.path(), "nowhere");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://ci-user:hunter2-secret@127.0.0.1:{port}/cache");
    let run = build(&root, &store, &[], &remote_env(&url));
    assert!(run.success, "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("remote cache").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(run.count("remote_errors") >= 1);
    for output in [&run.stderr, &run.stdout] {
        assert!(!output.contains("hunter2"), "credential printed: {output}");
        assert!(!output.contains("ci-user"), "user name printed: {output}");
    }
    assert!(run.stderr.contains("***@127.0.0.1"), "{}", run.stderr);
    assert_eq!(outputs(&root), expected);
}

#[test]
fn a_corrupt_remote_entry_is_detected_recomputed_and_uploaded_again() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cache");
    let (a, a_store) = example_clone(tmp.path(), "a");
    assert!(build(&a, &a_store, &[], &remote_env(&url)).success);
    let remote = server.root("cache");
    let pick = |kind: &str| {
        let dir = remote.join(kind);
        let mut files: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files[0].clone()
    };
    // One sample's statistics flipped, and the merged statistics cut short: a plain read of
    // either would be wrong numbers.
    let sample = pick("statistics");
    let merged = pick("merged-statistics");
    let (sample_good, merged_good) = (fs::read(&sample).unwrap(), fs::read(&merged).unwrap());
    let mut flipped = sample_good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    fs::write(&sample, &flipped).unwrap();
    fs::write(&merged, &merged_good[..merged_good.len() / 2]).unwrap();

    let (b, b_store) = example_clone(tmp.path(), "b");
    let run = build(&b, &b_store, &[], &remote_env(&url));
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("samples_run"), 1, "{}", run.summary);
    assert_eq!(run.count("remote_errors"), 2, "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("is corrupt").count(),
        2,
        "{}",
        run.stderr
    );
    assert_eq!(outputs(&b), outputs(&a));
    // Re-uploaded: the remote holds the good entries again.
    assert_eq!(fs::read(&sample).unwrap(), sample_good);
    assert_eq!(fs::read(&merged).unwrap(), merged_good);
}

#[test]
fn rejected_uploads_are_one_warning_and_a_clean_build() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let expected = clean_outputs(tmp.path());
    for (location, status) in [("put500", "500"), ("put403", "403")] {
        let (root, store) = example_clone(tmp.path(), location);
        let run = build(&root, &store, &[], &remote_env(&server.url(location)));
        assert!(run.success, "{}", run.stderr);
        assert!(
            run.count("remote_errors") >= 1,
            "{location}: {}",
            run.stderr
        );
        assert_eq!(run.count("bytes_uploaded"), 0);
        assert_eq!(
            run.stderr.matches("upload failed").count(),
            1,
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(status), "{}", run.stderr);
        assert!(tree(&server.root(location)).is_empty());
        assert_eq!(outputs(&root), expected, "{location}");
    }
}

#[test]
fn a_read_only_client_uploads_nothing_and_still_reads() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cache");
    let (a, a_store) = example_clone(tmp.path(), "a");
    let run = build(
        &a,
        &a_store,
        &["--remote-cache-read-only"],
        &remote_env(&url),
    );
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("bytes_uploaded"), 0);
    assert!(
        tree(&server.root("cache")).is_empty(),
        "a read-only build uploaded"
    );
    // Filled by a trusted build, the remote serves read-only clients.
    let (b, b_store) = example_clone(tmp.path(), "b");
    assert!(build(&b, &b_store, &[], &remote_env(&url)).success);
    let before = tree(&server.root("cache"));
    let (c, c_store) = example_clone(tmp.path(), "c");
    let run = build(
        &c,
        &c_store,
        &["--remote-cache-read-only"],
        &remote_env(&url),
    );
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("samples_run"), 0);
    assert_eq!(run.count("bytes_uploaded"), 0);
    assert_eq!(tree(&server.root("cache")), before);
    assert_eq!(outputs(&c), outputs(&a));
}

#[test]
fn the_manifest_cache_table_names_the_remote() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (root, store) = example_clone(tmp.path(), "a");
    let manifest = root.join("quant.toml");
    let text = fs::read_to_string(&manifest).unwrap();
    fs::write(
        &manifest,
        format!(
            "{text}\n[cache]\nremote = \"{}\"\nread_only = true\n",
            server.url("cache")
        ),
    )
    .unwrap();
    let run = build(&root, &store, &[], &[]);
    assert!(run.success, "{}", run.stderr);
    assert!(run.count("remote_misses") > 0, "{}", run.summary);
    assert!(
        tree(&server.root("cache")).is_empty(),
        "read_only = true uploaded"
    );

    fs::write(&manifest, format!("{text}\n[cache]\nremote = 3\n")).unwrap();
    let run = build(&root, &store, &[], &[]);
    assert!(!run.success);
    assert!(run.stderr.contains("remote"), "{}", run.stderr);
}

#[test]
fn bad_remote_urls_and_shards_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, store) = example_clone(tmp.path(), "a");
    for (args, says) in [
        (
            vec!["--remote-cache", "ftp://u:topsecret@host/x"],
            "unsupported scheme",
        ),
        (vec!["--remote-cache", "s3://"], "bucket"),
        (vec!["--shard", "4/4"], "not a shard"),
        (vec!["--shard", "x"], "not a shard"),
    ] {
        let run = build(&root, &store, &args, &[]);
        assert!(!run.success, "{args:?}");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(!run.stderr.contains("topsecret"), "{}", run.stderr);
    }
    assert!(!root.join("quant-out").exists());
}

#[test]
fn shards_fill_the_remote_and_a_plain_build_merges_them() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cache");
    let expected = clean_outputs(tmp.path());
    let mut total = 0;
    for k in 0..4 {
        let (root, store) = example_clone(tmp.path(), &format!("shard{k}"));
        let shard = format!("{k}/4");
        let run = build(&root, &store, &["--shard", &shard], &remote_env(&url));
        assert!(run.success, "{}", run.stderr);
        assert_eq!(run.count("samples_reused"), 0, "{}", run.summary);
        total += run.count("samples_run");
        assert!(!root.join("quant-out").exists(), "a shard wrote outputs");
    }
    assert_eq!(total, 8, "every sample in exactly one shard");
    let (root, store) = example_clone(tmp.path(), "merge");
    let run = build(&root, &store, &[], &remote_env(&url));
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.count("samples_run"), 0, "{}", run.summary);
    assert_eq!(outputs(&root), expected);
}

#[test]
fn a_sample_keeps_its_shard_when_samples_are_added() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, store) = example_clone(tmp.path(), "a");
    let list = root.join("calib/input_list.txt");
    let original = fs::read_to_string(&list).unwrap();
    // Each shard builds with its own store, as on its own machine; returns the samples each ran.
    let shards = || -> Vec<u64> {
        (0..4)
            .map(|k| {
                let run = build(
                    &root,
                    &store.join(format!("{k}")),
                    &["--shard", &format!("{k}/4")],
                    &[],
                );
                assert!(run.success, "{}", run.stderr);
                run.count("samples_run")
            })
            .collect()
    };
    let first = shards();
    // Duplicate the list's first sample under a new name with other bytes: only its shard grows.
    let first_line = original
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap()
        .trim()
        .to_string();
    let mut bytes = fs::read(root.join("calib").join(&first_line)).unwrap();
    bytes[0] ^= 1;
    fs::write(root.join("calib/extra.raw"), bytes).unwrap();
    fs::write(&list, format!("{original}extra.raw\n")).unwrap();
    let second = shards();
    // Each shard's store already holds its old samples: a rerun computes only the new one.
    assert_eq!(second.iter().sum::<u64>(), 1, "{first:?} then {second:?}");
    assert_eq!(first.iter().sum::<u64>(), 8);
}

#[test]
fn nothing_is_written_outside_the_store_and_the_outputs() {
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cache");
    let (a, a_store) = example_clone(tmp.path(), "a");
    assert!(build(&a, &a_store, &[], &remote_env(&url)).success);
    // Plant names a listing-based client might follow, next to the real entries.
    let remote = server.root("cache");
    fs::create_dir_all(remote.join("statistics/..%2F..%2Fescape")).unwrap();
    fs::write(remote.join("statistics/..%2F..%2Fescape/x"), b"QUANTOBJ").unwrap();
    fs::write(remote.join("../escape.txt"), b"not an entry").unwrap();
    let (b, b_store) = example_clone(tmp.path(), "b");
    let before = tree(tmp.path());
    let run = build(&b, &b_store, &[], &remote_env(&url));
    assert!(run.success, "{}", run.stderr);
    let after = tree(tmp.path());
    let b_out = b.strip_prefix(tmp.path()).unwrap().join("quant-out");
    let store = b_store.strip_prefix(tmp.path()).unwrap().to_path_buf();
    for (path, bytes) in &after {
        if path.starts_with(&b_out) || path.starts_with(&store) {
            continue;
        }
        assert_eq!(before.get(path), Some(bytes), "{} written", path.display());
    }
    // And every file in B's store is an entry under a locally computed key.
    for path in tree(&b_store).keys() {
        let name = path.to_string_lossy();
        assert!(
            name == "CACHEDIR.TAG" || name.starts_with("objects/"),
            "unexpected store file {name}"
        );
    }
}

/// moto's S3 server (`$QUANT_S3_SERVER`, installed from PyPI by .ci/run) on a free port, with
/// one bucket; stopped when dropped.
struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl S3Server {
    #[track_caller]
    fn start(bucket: &str) -> Option<S3Server> {
        let binary = std::env::var_os("QUANT_S3_SERVER").map(std::path::PathBuf::from);
        let Some(binary) = binary.filter(|b| b.is_file()) else {
            common::skip_or_fail(
                "no S3-compatible server: set QUANT_S3_SERVER to moto_server (pip install 'moto[server]'; .ci/run does)",
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let server = S3Server { child, port };
        let started = std::time::Instant::now();
        loop {
            // Creating the bucket is also the readiness probe (moto takes unsigned requests).
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let request = format!(
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).unwrap();
                let mut answer = String::new();
                let _ = stream.read_to_string(&mut answer);
                assert!(answer.starts_with("HTTP/1.1 200"), "bucket: {answer}");
                return Some(server);
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "the S3 server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_s3_bucket_serves_as_the_remote_with_credentials_from_the_environment() {
    let Some(server) = S3Server::start("quant-cache") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{}", server.port);
    let env = [
        ("QUANT_REMOTE_CACHE", "s3://quant-cache/ci/quant"),
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLEKEYID"),
        (
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
        ),
    ];
    let (a, a_store) = example_clone(tmp.path(), "a");
    let cold = build(&a, &a_store, &[], &env);
    assert!(cold.success, "{}", cold.stderr);
    assert_eq!(cold.count("remote_errors"), 0, "{}", cold.stderr);
    assert!(cold.count("bytes_uploaded") > 0);
    let (b, b_store) = example_clone(tmp.path(), "b");
    let warm = build(&b, &b_store, &[], &env);
    assert!(warm.success, "{}", warm.stderr);
    assert_eq!(warm.count("samples_run"), 0, "{}", warm.summary);
    assert!(warm.count("remote_hits") > 0);
    assert_eq!(outputs(&a), outputs(&b));
    for run in [&cold, &warm] {
        for output in [&run.stderr, &run.stdout] {
            assert!(
                !output.contains("wJalrXUtnFEMIK7MDENG"),
                "secret printed: {output}"
            );
        }
    }
}

/// det (`det.prep.onnx` and its 16 calibration samples from the fixtures) as a project in `dir`.
fn det_project(fixtures: &common::Fixtures, dir: &Path) {
    fs::create_dir_all(dir.join("models")).unwrap();
    fs::copy(
        fixtures.join("models/det.prep.onnx"),
        dir.join("models/det.onnx"),
    )
    .unwrap();
    copy_tree(&fixtures.join("det/calib"), &dir.join("calib"));
    fs::write(
        dir.join("quant.toml"),
        r#"[pipeline]
name = "det"

[models.det]
path = "models/det.onnx"

[calibration.pages]
input_list = "calib/input_list.txt"

[targets.htp]
backend = "htp"
calibration = "pages"
act_bitwidth = 8
weights_bitwidth = 8
bias_bitwidth = 32
param_quantizer_schema = "symmetric"
use_per_channel_quantization = true

[targets.htp-a16]
extends = "htp"
act_bitwidth = 16
"#,
    )
    .unwrap();
}

#[test]
fn a_second_det_clone_builds_from_the_remote_without_running_a_sample() {
    let Some(fixtures) = common::fixtures() else {
        return;
    };
    let Some(server) = Nginx::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("cache");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    det_project(&fixtures, &a);
    det_project(&fixtures, &b);
    let cold = build(&a, &tmp.path().join("a-store"), &[], &remote_env(&url));
    assert!(cold.success, "{}", cold.stderr);
    assert_eq!(cold.count("samples_run"), 16);
    let warm = build(&b, &tmp.path().join("b-store"), &[], &remote_env(&url));
    assert!(warm.success, "{}", warm.stderr);
    assert_eq!(warm.count("samples_run"), 0, "{}", warm.summary);
    assert_eq!(warm.count("tensors_encoded"), 0, "{}", warm.summary);
    assert_eq!(warm.count("remote_errors"), 0, "{}", warm.stderr);
    assert_eq!(outputs(&a), outputs(&b));
}
