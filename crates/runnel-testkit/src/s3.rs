//! A real S3-compatible server on loopback for the object-storage tests.
//!
//! [`S3Server::start`] serves the S3 API of the `s3s` crate over a directory (`s3s-fs`):
//! a bucket is a folder, an object a file, its content type kept beside it. The server
//! checks every request's signature the way S3 does: AWS Signature Version 4 in the
//! `Authorization` header and in a presigned URL's query, including the presigned URL's
//! expiry (`X-Amz-Expires`, exact to the second, no grace); an unsigned request is
//! refused too. So a test that passes against it shows that Runnel signs correctly,
//! and that a URL Runnel hands out stops working when it should.
//!
//! The server runs on its own thread with its own Tokio runtime, not on the test's: a
//! test may block on a child process (`runnel serve`, an exec worker) while the server
//! answers. Dropping the [`S3Server`] stops it and removes its directory.
//!
//! `runnel serve --blob-url s3://BUCKET/PREFIX` reaches it through the standard AWS
//! variables that [`S3Server::env`] lists (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, keys,
//! region).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// The region the server's credentials are scoped to (`s3s` does not check it, S3 does).
pub const S3_REGION: &str = "us-east-1";

/// A running S3-compatible server: one bucket, one access key.
#[derive(Debug)]
pub struct S3Server {
    /// `http://127.0.0.1:PORT`, the value of `AWS_ENDPOINT_URL`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    root: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl S3Server {
    /// Starts the server on a free 127.0.0.1 port with an empty bucket and a random key
    /// pair. Blocking and quick; callable from sync and async tests alike.
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("s3 server: temp dir");
        let bucket = "runnel-test".to_owned();
        std::fs::create_dir(root.path().join(&bucket)).expect("s3 server: bucket dir");
        let access_key_id = format!("AKIA{}", random_hex(8).to_uppercase());
        let secret_access_key = random_hex(20);

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("s3 server: bind");
        listener
            .set_nonblocking(true)
            .expect("s3 server: nonblocking");
        let addr: SocketAddr = listener.local_addr().expect("s3 server: local addr");

        let service = {
            let fs = s3s_fs::FileSystem::new(root.path()).expect("s3 server: file system");
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(
                access_key_id.clone(),
                secret_access_key.clone(),
            ));
            builder.build()
        };

        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("s3 server: runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("s3 server: listener");
                    loop {
                        let socket = tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                Err(_) => continue,
                            },
                            _ = &mut stopped => break,
                        };
                        let service = service.clone();
                        tokio::spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(socket), service)
                                .await;
                        });
                    }
                });
            })
            .expect("s3 server: thread");

        S3Server {
            endpoint: format!("http://{addr}"),
            bucket,
            region: S3_REGION.to_owned(),
            access_key_id,
            secret_access_key,
            root,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `s3://BUCKET/PREFIX`, the `--blob-url` that stores under `prefix` in this bucket.
    pub fn blob_url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_matches('/'))
    }

    /// The environment that points an S3 client (`object_store`'s builder `from_env`, and
    /// so `runnel serve --blob-url s3://…`) at this server with its credentials.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", self.access_key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.as_str()),
            ("AWS_REGION", self.region.as_str()),
            ("AWS_DEFAULT_REGION", self.region.as_str()),
        ]
    }

    /// The keys of every object in the bucket, sorted (read from the server's directory,
    /// so a test sees what really landed, not what a client says it wrote).
    pub fn object_keys(&self) -> Vec<String> {
        let bucket = self.root.path().join(&self.bucket);
        let mut keys = Vec::new();
        collect_files(&bucket, &bucket, &mut keys);
        keys.sort();
        keys
    }

    /// The bytes of one object, read from the server's directory.
    pub fn object_bytes(&self, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.path().join(&self.bucket).join(key)).ok()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn collect_files(base: &Path, dir: &Path, keys: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        let name = entry.file_name();
        // s3s-fs keeps its bookkeeping (metadata, uploads) in dot-files
        if name.to_string_lossy().starts_with(".") {
            continue;
        }
        if path.is_dir() {
            collect_files(base, &path, keys);
        } else if let Ok(relative) = path.strip_prefix(base) {
            keys.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
