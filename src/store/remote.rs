//! The shared remote cache behind a [`super::Store`]: an HTTP cache speaking GET/PUT on
//! `<base>/<kind>/<key>` (nginx WebDAV, Bazel-style caches) or an S3-compatible bucket, read
//! through on a local miss and written back after a local `put`.
//!
//! It owns the connection (an `object_store` client and the small tokio runtime that drives it,
//! so the engine stays synchronous), the timeouts, the counters `--json` reports and the
//! warnings the CLI prints. It must not decide what is cached (the store's kinds do) and must
//! never fail a build: every failure becomes one warning and the build goes on with the local
//! store alone.
//!
//! **Safety:** the remote never names anything. Object names are built here from a [`Kind`]
//! (a constant of `a-z0-9-`) and a locally computed key (64 hex digits); nothing is listed, and
//! a downloaded entry is only ever written to [`super::Store::entry_path`] of the key that was
//! asked for. Every download is verified (magic, format, length, blake3 digest of the payload)
//! before it is written locally or used.
//!
//! **Credentials** come from each service's standard environment variables (S3: `AWS_*`) or
//! from the URL's user info (HTTP basic authentication); messages show the URL with its user
//! info replaced by `***`, and error texts are scrubbed of it.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};

use super::digest::Digest;
use super::entry;
use super::key::Kind;

/// Environment variable naming the remote cache (same syntax as `--remote-cache`).
pub const REMOTE_CACHE_ENV: &str = "QUANT_REMOTE_CACHE";

/// How long opening a connection may take before the remote counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request (headers and body) may take before the remote counts as too slow.
/// Generous for the largest entries (transformed models) on a slow link; a build waits this
/// long at most once, since the first failure turns the remote off for the rest of the build.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What `--json` reports about the remote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RemoteCounts {
    /// Entries found on the remote (verified, then kept in the local store).
    pub remote_hits: u64,
    /// Local misses the remote did not have either.
    pub remote_misses: u64,
    /// Failed requests, corrupt downloads and rejected uploads.
    pub remote_errors: u64,
    /// Bytes of the entries downloaded.
    pub bytes_downloaded: u64,
    /// Bytes of the entries uploaded.
    pub bytes_uploaded: u64,
}

/// Why a remote cache URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    /// Neither `http(s)://` nor `s3://`.
    #[error(
        "remote cache `{url}`: unsupported scheme; use `http://HOST/PATH`, `https://HOST/PATH` or `s3://BUCKET/PREFIX`"
    )]
    Scheme {
        /// The URL, its user info redacted.
        url: String,
    },
    /// Not a URL at all, or one the client rejects.
    #[error("remote cache `{url}`: {message}")]
    Invalid {
        /// The URL, its user info redacted.
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// A connection to a remote cache. Shared by every clone of a store; any thread may use it.
pub struct Remote {
    objects: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    shown: String,
    secrets: Vec<String>,
    read_only: bool,
    /// Set by the first failed request: the rest of the build is local.
    off: AtomicBool,
    /// Set by the first rejected upload: reads go on, uploads stop.
    uploads_off: AtomicBool,
    /// Set by the first failure warned about: a server that is gone fails uploads and reads
    /// alike, and one warning says so.
    warned: AtomicBool,
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    downloaded: AtomicU64,
    uploaded: AtomicU64,
    warnings: Mutex<Vec<String>>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.shown)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Connects (lazily: no request is made here) to the cache at `url`: `http://` and
    /// `https://` for an HTTP cache, `s3://BUCKET/PREFIX` for S3 (endpoint, region and
    /// credentials from the `AWS_*` environment variables). `read_only` never uploads.
    pub fn open(url: &str, read_only: bool) -> Result<Remote, RemoteConfigError> {
        let (shown, secrets) = redact_url(url);
        let invalid = |message: String| RemoteConfigError::Invalid {
            url: shown.clone(),
            message: scrub(&message, &secrets),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        let timeout = humantime_secs(REQUEST_TIMEOUT);
        let connect = humantime_secs(CONNECT_TIMEOUT);
        // Retrying would multiply the timeouts; the first failure already sends the build local.
        let retry = RetryConfig {
            max_retries: 0,
            retry_timeout: REQUEST_TIMEOUT,
            ..RetryConfig::default()
        };
        let objects: Arc<dyn ObjectStore> = match parsed.scheme() {
            "http" | "https" => {
                let options = ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT);
                // A trailing slash would give every object an empty path segment.
                let base = url.trim_end_matches('/');
                Arc::new(
                    HttpBuilder::new()
                        .with_url(base)
                        .with_client_options(options)
                        .with_retry(retry)
                        .build()
                        .map_err(|e| invalid(e.to_string()))?,
                )
            }
            "s3" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| invalid("no bucket: write `s3://BUCKET/PREFIX`".into()))?;
                let s3 = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        timeout.as_str(),
                    )
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                        connect.as_str(),
                    )
                    .with_retry(retry)
                    .build()
                    .map_err(|e| invalid(e.to_string()))?;
                let prefix = parsed.path().trim_matches('/');
                if prefix.is_empty() {
                    Arc::new(s3)
                } else {
                    Arc::new(PrefixStore::new(s3, prefix))
                }
            }
            _ => return Err(RemoteConfigError::Scheme { url: shown }),
        };
        // One thread's runtime is enough: whichever build thread is waiting on a request
        // drives the connections of all of them, so parallel samples still overlap their
        // requests.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| invalid(format!("could not start the network runtime: {e}")))?;
        Ok(Remote {
            objects,
            runtime,
            shown,
            secrets,
            read_only,
            off: AtomicBool::new(false),
            uploads_off: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            warnings: Mutex::new(Vec::new()),
        })
    }

    /// The URL as messages show it (user info replaced by `***`).
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// Whether uploads are off by configuration (`--remote-cache-read-only`).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The counters so far.
    pub fn counts(&self) -> RemoteCounts {
        RemoteCounts {
            remote_hits: self.hits.load(Ordering::Relaxed),
            remote_misses: self.misses.load(Ordering::Relaxed),
            remote_errors: self.errors.load(Ordering::Relaxed),
            bytes_downloaded: self.downloaded.load(Ordering::Relaxed),
            bytes_uploaded: self.uploaded.load(Ordering::Relaxed),
        }
    }

    /// The warnings raised since the last call, worded for the user, credentials removed.
    pub fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The object name of an entry: built only from the kind's constant name and the key's
    /// hex digits, so no server answer can steer where anything is read or written.
    fn object(kind: Kind, key: &Digest) -> ObjectPath {
        ObjectPath::from(format!("{}/{}", kind.name(), key.to_hex()))
    }

    /// Downloads the entry of `kind` under `key`: the whole entry file, verified, and its
    /// payload. `None` on a miss, when the remote is off, or on any failure (warned about).
    pub(super) fn fetch(&self, kind: Kind, key: &Digest) -> Option<(Vec<u8>, Vec<u8>)> {
        if self.off.load(Ordering::Relaxed) {
            return None;
        }
        let object = Remote::object(kind, key);
        let objects = self.objects.clone();
        let result = self.block_on(async move { objects.get(&object).await?.bytes().await });
        let bytes = match result {
            Ok(bytes) => bytes.to_vec(),
            Err(object_store::Error::NotFound { .. }) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => {
                self.fail(&format!("could not read `{kind}` entries"), &e.to_string());
                return None;
            }
        };
        self.downloaded
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        match entry::verify(bytes.clone()) {
            Ok(payload) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some((bytes, payload))
            }
            Err(reason) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.warn(format!(
                    "remote cache {}: entry {}/{} is corrupt ({reason}); it is recomputed here and uploaded again",
                    self.shown,
                    kind.name(),
                    key.short()
                ));
                None
            }
        }
    }

    /// Whether the remote has an entry of `kind` under `key`, without downloading it.
    pub(super) fn has(&self, kind: Kind, key: &Digest) -> bool {
        if self.off.load(Ordering::Relaxed) {
            return false;
        }
        let object = Remote::object(kind, key);
        let objects = self.objects.clone();
        match self.block_on(async move { objects.head(&object).await }) {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => {
                self.fail(
                    &format!("could not look up `{kind}` entries"),
                    &e.to_string(),
                );
                false
            }
        }
    }

    /// Uploads a whole entry file (header and payload), unless read-only, off, or uploads
    /// were rejected before.
    pub(super) fn upload(&self, kind: Kind, key: &Digest, file: Vec<u8>) {
        if self.read_only
            || self.off.load(Ordering::Relaxed)
            || self.uploads_off.load(Ordering::Relaxed)
        {
            return;
        }
        let object = Remote::object(kind, key);
        let objects = self.objects.clone();
        let len = file.len() as u64;
        match self.block_on(async move { objects.put(&object, file.into()).await }) {
            Ok(_) => {
                self.uploaded.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                self.uploads_off.store(true, Ordering::Relaxed);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    self.warn(format!(
                        "remote cache {}: an upload failed ({}); nothing more is uploaded in this build",
                        self.shown,
                        scrub(&e.to_string(), &self.secrets)
                    ));
                }
            }
        }
    }

    /// Runs one request to completion on the remote's runtime, bounded by the request timeout
    /// even if the client's own timeouts do not fire (a server trickling bytes).
    fn block_on<T>(
        &self,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        // The timer must be made inside the runtime, which owns the time driver.
        let bounded =
            async move { tokio::time::timeout(REQUEST_TIMEOUT + CONNECT_TIMEOUT, request).await };
        match self.runtime.block_on(bounded) {
            Ok(result) => result,
            Err(_) => Err(object_store::Error::Generic {
                store: "remote cache",
                source: format!(
                    "no answer within {}s",
                    (REQUEST_TIMEOUT + CONNECT_TIMEOUT).as_secs()
                )
                .into(),
            }),
        }
    }

    /// A failed request: counted, warned about once, and the remote turned off.
    fn fail(&self, what: &str, error: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.off.store(true, Ordering::Relaxed);
        if !self.warned.swap(true, Ordering::Relaxed) {
            self.warn(format!(
                "remote cache {}: {what} ({}); the build goes on with the local store only",
                self.shown,
                scrub(error, &self.secrets)
            ));
        }
    }

    fn warn(&self, message: String) {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(message);
    }
}

fn humantime_secs(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

/// The URL with its user info replaced by `***`, and the secrets to scrub from error texts
/// (the user info whole, and the password alone, raw and percent-decoded).
pub fn redact_url(url: &str) -> (String, Vec<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL: still never echo what could be user info.
        return match url.split_once('@') {
            Some((_, rest)) => (format!("***@{rest}"), vec![url.to_string()]),
            None => (url.to_string(), Vec::new()),
        };
    };
    let mut secrets = Vec::new();
    if let Some(password) = parsed.password() {
        secrets.push(password.to_string());
        if let Ok(decoded) = percent_encoding::percent_decode_str(password).decode_utf8() {
            secrets.push(decoded.into_owned());
        }
    }
    if !parsed.username().is_empty() {
        // The user name alone may be a common word or a single letter: only the whole user
        // info is scrubbed, the user name is merely never shown.
        if let Some(password) = parsed.password() {
            secrets.push(format!("{}:{password}", parsed.username()));
        } else {
            secrets.push(format!("{}@", parsed.username()));
        }
    }
    if secrets.is_empty() && parsed.username().is_empty() {
        return (url.to_string(), secrets);
    }
    let _ = parsed.set_password(None);
    let _ = parsed.set_username("***");
    secrets.retain(|s| !s.is_empty());
    // Longest first, so a password containing the user name is removed whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    (parsed.to_string(), secrets)
}

/// `text`'s first line (a server's error page follows it) with every secret replaced by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let first = text.lines().next().unwrap_or_default();
    let mut out = first.trim_end_matches([':', ' ']).to_string();
    for secret in secrets {
        out = out.replace(secret.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_never_shows() {
        let (shown, secrets) = redact_url("https://ci:s3cr%40t@cache.example/quant");
        assert_eq!(shown, "https://***@cache.example/quant");
        assert!(!shown.contains("s3cr"));
        let message =
            "error sending request for url (https://ci:s3cr%40t@cache.example/quant/x): s3cr@t";
        let scrubbed = scrub(message, &secrets);
        assert!(!scrubbed.contains("s3cr"), "{scrubbed}");
        assert!(!scrubbed.contains("ci:"), "{scrubbed}");
    }

    #[test]
    fn plain_urls_are_shown_as_given() {
        let (shown, secrets) = redact_url("http://127.0.0.1:8080/cache");
        assert_eq!(shown, "http://127.0.0.1:8080/cache");
        assert!(secrets.is_empty());
    }

    #[test]
    fn object_names_are_kind_and_hex_only() {
        let key = Digest::of(b"sample");
        let object = Remote::object(Kind::new("statistics", 5), &key);
        assert_eq!(object.as_ref(), format!("statistics/{}", key.to_hex()));
    }

    #[test]
    fn unsupported_schemes_are_refused_without_credentials() {
        let err = Remote::open("ftp://user:pw@host/x", false).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unsupported scheme"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
}
