//! Object storage for large payloads and outputs (contract §4.6, "packets").
//!
//! [`Blobs`] is the one place Runnel talks to object storage, through the `object_store`
//! crate: a local directory (`<data-dir>/blobs`, the default), an in-memory store (tests,
//! an engine built without configuration), or any S3-compatible service
//! (`--blob-url s3://bucket/prefix`, credentials and endpoint from the standard `AWS_*`
//! variables).
//!
//! Keys: a packet path is always relative to its environment and lands at
//! `[<prefix>/]packets/<project id>/<environment slug>/<path>`; a path is checked with
//! [`runnel_core::packets::path_check`] first, so it cannot climb out of that prefix.
//!
//! Presigned URLs let a client move the bytes without the server holding them: S3 signs
//! natively (SigV4 query strings); the local store is served by the server itself at
//! `/blobs/<key>?expires=<unix>&signature=<hex>`, where the signature is an HMAC-SHA256 of
//! `METHOD\nkey\nexpires` under a key derived from the master key (`blob-urls`), so a GET
//! URL cannot be used to PUT, an altered key or expiry fails, and every node sharing the
//! master key (and the directory) accepts the others' URLs.
//!
//! Content types: the SDK parses a downloaded packet by its `Content-Type`
//! (`application/super+json` vs `application/json`), so the type a PUT sent must come back
//! on GET. S3 keeps it as the object's own metadata; the local and in-memory stores keep a
//! small sidecar object at `content-types/<key>`.
//!
//! Nothing here deletes a packet: a run (and its replays) point at their objects for as
//! long as the run exists.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload, WriteMultipart,
};
use runnel_core::run::{Packet, Run};
use runnel_core::secrets::MasterKeys;
use runnel_core::tenancy::Environment;
use runnel_core::trigger::TriggerError;
use sha2::Sha256;

use crate::Engine;

/// Inline payloads and outputs of at least this many bytes are offloaded by the server
/// (upstream's `TASK_PAYLOAD_OFFLOAD_THRESHOLD`).
pub const OFFLOAD_THRESHOLD_DEFAULT: usize = 524_288;
/// How long a presigned URL stays valid.
pub const URL_TTL_DEFAULT: Duration = Duration::from_secs(300);
/// The largest object accepted through the local store's presigned PUT.
pub const MAX_BYTES_DEFAULT: u64 = 100 * 1024 * 1024;

/// Where the objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// In this process's memory: tests, or an engine built without configuration.
    Memory,
    /// A local directory (one node, or a directory every node shares).
    Local(PathBuf),
    /// An S3-compatible bucket, with an optional key prefix (no leading or trailing `/`).
    S3 { bucket: String, prefix: String },
}

impl BlobLocation {
    /// `--blob-url`: absent is `default_dir`; `s3://bucket[/prefix]` is S3; `file:///dir`
    /// or a plain path is a local directory.
    pub fn parse(url: Option<&str>, default_dir: PathBuf) -> Result<BlobLocation, BlobError> {
        let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(BlobLocation::Local(default_dir));
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(BlobError::Config(format!(
                    "--blob-url {url}: no bucket (expected s3://bucket/prefix)"
                )));
            }
            let prefix = prefix.trim_matches('/').to_owned();
            if !prefix.is_empty() {
                runnel_core::packets::path_check(&prefix)
                    .map_err(|m| BlobError::Config(format!("--blob-url {url}: the prefix {m}")))?;
            }
            return Ok(BlobLocation::S3 {
                bucket: bucket.to_owned(),
                prefix,
            });
        }
        if let Some(dir) = url.strip_prefix("file://") {
            return Ok(BlobLocation::Local(PathBuf::from(dir)));
        }
        if url.contains("://") {
            return Err(BlobError::Config(format!(
                "--blob-url {url}: unsupported scheme (use s3://bucket/prefix, or a local directory)"
            )));
        }
        Ok(BlobLocation::Local(PathBuf::from(url)))
    }
}

/// How [`Blobs`] is built.
#[derive(Debug, Clone)]
pub struct BlobConfig {
    pub location: BlobLocation,
    /// Inline payloads and outputs of at least this many bytes are offloaded.
    pub offload_threshold: usize,
    /// How long presigned URLs stay valid.
    pub url_ttl: Duration,
    /// The largest body the local store's presigned PUT accepts (413 beyond).
    pub max_bytes: u64,
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            location: BlobLocation::Memory,
            offload_threshold: OFFLOAD_THRESHOLD_DEFAULT,
            url_ttl: URL_TTL_DEFAULT,
            max_bytes: MAX_BYTES_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob storage configuration: {0}")]
    Config(String),
    /// A packet path or key the store refuses (400 naming the path).
    #[error("path: {0}")]
    InvalidPath(String),
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

/// What a presigned URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobMethod {
    Get,
    Put,
}

impl BlobMethod {
    fn as_str(self) -> &'static str {
        match self {
            BlobMethod::Get => "GET",
            BlobMethod::Put => "PUT",
        }
    }
}

/// Why a local presigned URL was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("this server does not serve blob URLs (its blobs are in S3)")]
    NotLocal,
    #[error("the URL has expired")]
    Expired,
    #[error("the URL's signature does not match")]
    BadSignature,
}

/// Why a streamed PUT through a local URL did not store the object.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the body is over {0} bytes")]
    TooLarge(u64),
    #[error("the body stopped arriving: {0}")]
    Body(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// An object read through a local URL, streamed.
pub struct BlobRead {
    pub content_type: String,
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, object_store::Error>>,
}

impl fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobRead")
            .field("content_type", &self.content_type)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Object storage for packets; cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    /// Set for S3, which presigns natively; the other stores are served by the server.
    s3: Option<Arc<AmazonS3>>,
    /// `""` or `"<prefix>/"`.
    prefix: String,
    config: BlobConfig,
    url_key: [u8; 32],
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs")
            .field("location", &self.inner.config.location)
            .field("offload_threshold", &self.inner.config.offload_threshold)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Blobs {
    /// Builds the store `config` names; local URLs are signed under a key derived from
    /// the current master key.
    pub fn new(config: BlobConfig, keys: &MasterKeys) -> Result<Blobs, BlobError> {
        let (store, s3, prefix): (Arc<dyn ObjectStore>, _, _) = match &config.location {
            BlobLocation::Memory => (Arc::new(InMemory::new()), None, String::new()),
            BlobLocation::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    BlobError::Config(format!("cannot create {}: {e}", dir.display()))
                })?;
                let local = LocalFileSystem::new_with_prefix(dir)?;
                (Arc::new(local), None, String::new())
            }
            BlobLocation::S3 { bucket, prefix } => {
                let s3 = Arc::new(
                    AmazonS3Builder::from_env()
                        .with_bucket_name(bucket)
                        .build()
                        .map_err(|e| BlobError::Config(format!("s3://{bucket}: {e}")))?,
                );
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                (s3.clone() as Arc<dyn ObjectStore>, Some(s3), prefix)
            }
        };
        Ok(Blobs {
            inner: Arc::new(Inner {
                store,
                s3,
                prefix,
                url_key: keys.current().derive("blob-urls"),
                config,
            }),
        })
    }

    /// An in-memory store (tests, and an engine built without configuration).
    pub fn in_memory(keys: &MasterKeys) -> Blobs {
        Blobs::new(BlobConfig::default(), keys).expect("an in-memory store always builds")
    }

    pub fn config(&self) -> &BlobConfig {
        &self.inner.config
    }

    /// Whether the server serves this store's URLs itself (`/blobs/…`).
    pub fn serves_urls(&self) -> bool {
        self.inner.s3.is_none()
    }

    /// The object key of `path` in `environment`; `path` must pass
    /// [`runnel_core::packets::path_check`].
    pub fn key(&self, environment: &Environment, path: &str) -> Result<Path, BlobError> {
        runnel_core::packets::path_check(path)
            .map_err(|m| BlobError::InvalidPath(format!("{path:?} {m}")))?;
        let key = format!(
            "{}packets/{}/{}/{path}",
            self.inner.prefix,
            environment.project_id,
            environment.kind.slug()
        );
        Path::parse(&key).map_err(|e| BlobError::InvalidPath(e.to_string()))
    }

    /// A URL that allows `method` on `path` of `environment` for the configured
    /// lifetime. `base_url` is this server's address as the caller reached it (local
    /// stores only).
    pub async fn presign(
        &self,
        method: BlobMethod,
        environment: &Environment,
        path: &str,
        base_url: &str,
        now: DateTime<Utc>,
    ) -> Result<String, BlobError> {
        let key = self.key(environment, path)?;
        self.presign_key(method, &key, base_url, now).await
    }

    async fn presign_key(
        &self,
        method: BlobMethod,
        key: &Path,
        base_url: &str,
        now: DateTime<Utc>,
    ) -> Result<String, BlobError> {
        let ttl = self.inner.config.url_ttl;
        if let Some(s3) = &self.inner.s3 {
            let method = match method {
                BlobMethod::Get => object_store::signer::Method::GET,
                BlobMethod::Put => object_store::signer::Method::PUT,
            };
            return Ok(s3.signed_url(method, key, ttl).await?.to_string());
        }
        let expires = now.timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let signature = hex::encode(self.url_mac(method, key.as_ref(), expires));
        let encoded: Vec<String> = key.as_ref().split('/').map(percent_encode).collect();
        Ok(format!(
            "{}/blobs/{}?expires={expires}&signature={signature}",
            base_url.trim_end_matches('/'),
            encoded.join("/")
        ))
    }

    fn url_mac(&self, method: BlobMethod, key: &str, expires: i64) -> [u8; 32] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.inner.url_key)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{}\n{key}\n{expires}", method.as_str()).as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Checks a local URL (`/blobs/<key>?expires=…&signature=…`) for `method` at `now`
    /// and answers the object key it allows. The comparison is constant-time.
    pub fn url_check(
        &self,
        method: BlobMethod,
        key: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<Path, UrlRefused> {
        if !self.serves_urls() {
            return Err(UrlRefused::NotLocal);
        }
        let given = hex::decode(signature).map_err(|_| UrlRefused::BadSignature)?;
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.inner.url_key)
            .expect("HMAC takes a key of any length");
        mac.update(format!("{}\n{key}\n{expires}", method.as_str()).as_bytes());
        mac.verify_slice(&given)
            .map_err(|_| UrlRefused::BadSignature)?;
        if now.timestamp() >= expires {
            return Err(UrlRefused::Expired);
        }
        let key = Path::parse(key).map_err(|_| UrlRefused::BadSignature)?;
        Ok(key)
    }

    /// Whether an object is stored at `path` of `environment`.
    pub async fn exists(&self, environment: &Environment, path: &str) -> Result<bool, BlobError> {
        let key = self.key(environment, path)?;
        match self.inner.store.head(&key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `data` at `path` of `environment` with `content_type` (a server-side
    /// offload: the data is already in memory, bounded by the request limit).
    pub async fn put(
        &self,
        environment: &Environment,
        path: &str,
        data: Bytes,
        content_type: &str,
    ) -> Result<(), BlobError> {
        let key = self.key(environment, path)?;
        if self.inner.s3.is_some() {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, content_type.to_owned().into());
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            self.inner
                .store
                .put_opts(&key, PutPayload::from(data), options)
                .await?;
            return Ok(());
        }
        self.inner.store.put(&key, PutPayload::from(data)).await?;
        self.content_type_record(&key, content_type).await
    }

    fn sidecar(key: &Path) -> Path {
        Path::parse(format!("content-types/{key}")).expect("a valid key prefixed stays valid")
    }

    async fn content_type_record(&self, key: &Path, content_type: &str) -> Result<(), BlobError> {
        self.inner
            .store
            .put(
                &Self::sidecar(key),
                PutPayload::from(content_type.to_owned()),
            )
            .await?;
        Ok(())
    }

    /// Streams `body` into the object at `key` (a local URL's PUT), at most
    /// [`BlobConfig::max_bytes`]; an oversized or broken body is aborted, leaving nothing
    /// stored. `content_type` is kept for the GET (default `application/octet-stream`).
    pub async fn put_stream<E: fmt::Display>(
        &self,
        key: &Path,
        content_type: Option<&str>,
        body: impl Stream<Item = Result<Bytes, E>> + Send,
    ) -> Result<u64, PutError> {
        let max = self.inner.config.max_bytes;
        let upload = self
            .inner
            .store
            .put_multipart(key)
            .await
            .map_err(BlobError::from)?;
        let mut writer = WriteMultipart::new(upload);
        let mut body = std::pin::pin!(body);
        let mut total: u64 = 0;
        let failure = loop {
            match body.next().await {
                None => break None,
                Some(Err(e)) => break Some(PutError::Body(e.to_string())),
                Some(Ok(chunk)) => {
                    total += chunk.len() as u64;
                    if total > max {
                        break Some(PutError::TooLarge(max));
                    }
                    if let Err(e) = writer.wait_for_capacity(4).await {
                        break Some(PutError::Blob(e.into()));
                    }
                    writer.put(chunk);
                }
            }
        };
        if let Some(failure) = failure {
            if let Err(e) = writer.abort().await {
                tracing::warn!(key = %key, error = %e, "aborting a refused blob upload failed");
            }
            return Err(failure);
        }
        writer.finish().await.map_err(BlobError::from)?;
        self.content_type_record(key, content_type.unwrap_or("application/octet-stream"))
            .await?;
        Ok(total)
    }

    /// Opens the object at `key` for streaming (a local URL's GET); `None` when nothing
    /// is stored there.
    pub async fn get_stream(&self, key: &Path) -> Result<Option<BlobRead>, BlobError> {
        let result = match self.inner.store.get(key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let content_type = match self.inner.store.get(&Self::sidecar(key)).await {
            Ok(sidecar) => String::from_utf8_lossy(&sidecar.bytes().await?).into_owned(),
            Err(object_store::Error::NotFound { .. }) => Packet::JSON.to_owned(),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(BlobRead {
            content_type,
            size: result.meta.size,
            body: result.into_stream(),
        }))
    }
}

/// Percent-encodes one key segment for a URL path (RFC 3986 unreserved kept).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Engine {
    /// The object storage of packets.
    pub fn blobs(&self) -> &Blobs {
        &self.config.blobs
    }

    /// Settles a new run's payload before it is stored: an `application/store` payload
    /// must name an object that exists; an inline one at or over the offload threshold is
    /// uploaded to `<runId>/payload.json` (keeping its content type) and stored as
    /// `application/store`. The outer error is storage failing, the inner the run's
    /// refusal.
    pub(crate) async fn payload_settle(
        &self,
        environment: &Environment,
        run: &mut Run,
    ) -> Result<Result<(), TriggerError>, BlobError> {
        let Some(data) = &run.payload.data else {
            return Ok(Ok(()));
        };
        let blobs = self.blobs();
        if run.payload.data_type == Packet::STORE {
            return Ok(match blobs.exists(environment, data).await? {
                true => Ok(()),
                false => Err(TriggerError::NotStored(data.clone())),
            });
        }
        if data.len() < blobs.config().offload_threshold {
            return Ok(Ok(()));
        }
        let path = runnel_core::packets::payload_path(&run.id);
        let data = run.payload.data.take().unwrap_or_default();
        blobs
            .put(
                environment,
                &path,
                Bytes::from(data),
                &run.payload.data_type,
            )
            .await?;
        run.payload = Packet {
            data: Some(path),
            data_type: Packet::STORE.to_owned(),
        };
        Ok(Ok(()))
    }

    /// An output about to be stored: an inline one at or over the offload threshold is
    /// uploaded to `path` and replaced by its storage path.
    pub(crate) async fn output_offload(
        &self,
        environment: &Environment,
        output: Packet,
        path: impl FnOnce() -> String,
    ) -> Result<Packet, BlobError> {
        let blobs = self.blobs();
        let Some(data) = &output.data else {
            return Ok(output);
        };
        if output.data_type == Packet::STORE || data.len() < blobs.config().offload_threshold {
            return Ok(output);
        }
        let path = path();
        let Packet { data, data_type } = output;
        blobs
            .put(
                environment,
                &path,
                Bytes::from(data.unwrap_or_default()),
                &data_type,
            )
            .await?;
        Ok(Packet {
            data: Some(path),
            data_type: Packet::STORE.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_core::{EnvironmentId, EnvironmentKind, ProjectId};

    fn env(kind: EnvironmentKind) -> Environment {
        Environment {
            id: EnvironmentId::generate(1),
            project_id: ProjectId::generate(1),
            kind,
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn query(url: &str) -> (String, i64, String) {
        let (path, query) = url.split_once('?').unwrap();
        let key = path.split_once("/blobs/").unwrap().1.to_owned();
        let mut expires = 0;
        let mut signature = String::new();
        for pair in query.split('&') {
            match pair.split_once('=').unwrap() {
                ("expires", v) => expires = v.parse().unwrap(),
                ("signature", v) => signature = v.to_owned(),
                _ => {}
            }
        }
        (key, expires, signature)
    }

    #[test]
    fn locations() {
        let dir = PathBuf::from("/data/blobs");
        assert_eq!(
            BlobLocation::parse(None, dir.clone()).unwrap(),
            BlobLocation::Local(dir.clone())
        );
        assert_eq!(
            BlobLocation::parse(Some("s3://bkt/a/b/"), dir.clone()).unwrap(),
            BlobLocation::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            BlobLocation::parse(Some("s3://bkt"), dir.clone()).unwrap(),
            BlobLocation::S3 {
                bucket: "bkt".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            BlobLocation::parse(Some("file:///x"), dir.clone()).unwrap(),
            BlobLocation::Local(PathBuf::from("/x"))
        );
        for bad in ["s3://", "s3:///p", "gs://b", "s3://b/../x"] {
            assert!(
                BlobLocation::parse(Some(bad), dir.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn local_urls_are_signed_per_method_key_and_expiry() {
        let blobs = Blobs::in_memory(&MasterKeys::ephemeral());
        let e = env(EnvironmentKind::Dev);
        let url = blobs
            .presign(BlobMethod::Get, &e, "a b/p.json", "http://h:1/", t(1000))
            .await
            .unwrap();
        assert!(url.starts_with("http://h:1/blobs/packets/"), "{url}");
        assert!(
            url.contains("/dev/a%20b/p.json?expires=1300&signature="),
            "{url}"
        );
        let (encoded, expires, sig) = query(&url);
        let key = encoded.replace("%20", " ");
        let ok = blobs.url_check(BlobMethod::Get, &key, expires, &sig, t(1299));
        assert_eq!(ok.unwrap().as_ref(), key);
        // Expired at `expires`.
        assert_eq!(
            blobs.url_check(BlobMethod::Get, &key, expires, &sig, t(1300)),
            Err(UrlRefused::Expired)
        );
        // Another method, key or expiry.
        assert_eq!(
            blobs.url_check(BlobMethod::Put, &key, expires, &sig, t(1000)),
            Err(UrlRefused::BadSignature)
        );
        assert_eq!(
            blobs.url_check(BlobMethod::Get, &format!("{key}x"), expires, &sig, t(1000)),
            Err(UrlRefused::BadSignature)
        );
        assert_eq!(
            blobs.url_check(BlobMethod::Get, &key, expires + 1, &sig, t(1000)),
            Err(UrlRefused::BadSignature)
        );
        // One hex digit of the signature changed.
        let mut altered = sig.clone().into_bytes();
        altered[5] = if altered[5] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            blobs.url_check(BlobMethod::Get, &key, expires, &altered, t(1000)),
            Err(UrlRefused::BadSignature)
        );
        assert_eq!(
            blobs.url_check(BlobMethod::Get, &key, expires, "zz", t(1000)),
            Err(UrlRefused::BadSignature)
        );
        // Another master key signs differently.
        let other = Blobs::in_memory(&MasterKeys::ephemeral());
        assert_eq!(
            other.url_check(BlobMethod::Get, &key, expires, &sig, t(1000)),
            Err(UrlRefused::BadSignature)
        );
    }

    #[test]
    fn keys_stay_in_their_environment() {
        let blobs = Blobs::in_memory(&MasterKeys::ephemeral());
        let e = env(EnvironmentKind::Prod);
        let key = blobs.key(&e, "run_1/payload.json").unwrap();
        assert_eq!(
            key.as_ref(),
            format!("packets/{}/prod/run_1/payload.json", e.project_id)
        );
        for bad in ["../x", "a//b", "", "/a"] {
            assert!(matches!(blobs.key(&e, bad), Err(BlobError::InvalidPath(_))));
        }
    }

    #[tokio::test]
    async fn streamed_puts_keep_the_content_type_and_refuse_oversized_bodies() {
        let config = BlobConfig {
            max_bytes: 10,
            ..BlobConfig::default()
        };
        let blobs = Blobs::new(config, &MasterKeys::ephemeral()).unwrap();
        let e = env(EnvironmentKind::Dev);
        let key = blobs.key(&e, "p.json").unwrap();
        let chunks = |parts: &[&'static str]| {
            futures_util::stream::iter(
                parts
                    .iter()
                    .map(|p| Ok::<_, std::io::Error>(Bytes::from_static(p.as_bytes())))
                    .collect::<Vec<_>>(),
            )
        };
        let n = blobs
            .put_stream(
                &key,
                Some("application/super+json"),
                chunks(&["{\"a\"", ":1}"]),
            )
            .await
            .unwrap();
        assert_eq!(n, 7);
        let read = blobs.get_stream(&key).await.unwrap().unwrap();
        assert_eq!(read.content_type, "application/super+json");
        let body: Vec<Bytes> = read.body.map(|c| c.unwrap()).collect().await;
        assert_eq!(body.concat(), b"{\"a\":1}");

        let big = blobs.key(&e, "big.json").unwrap();
        let refused = blobs
            .put_stream(&big, None, chunks(&["123456", "789012"]))
            .await;
        assert!(matches!(refused, Err(PutError::TooLarge(10))));
        assert!(blobs.get_stream(&big).await.unwrap().is_none());
        assert!(!blobs.exists(&e, "big.json").await.unwrap());
        assert!(blobs.exists(&e, "p.json").await.unwrap());
    }
}
