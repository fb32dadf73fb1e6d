//! The one test harness Runnel's suites share (a dev-dependency only, never published).
//!
//! - [`pg`]: a fresh PostgreSQL database per test, dropped after it, with the
//!   `RUNNEL_TEST_DATABASE_URL` / `RUNNEL_SKIP_POSTGRES_TESTS` rules and the cleanup of
//!   databases killed runs left behind; and `RUNNEL_TEST_BACKEND`, the store a suite's
//!   servers run on. The store conformance suite, the in-process server and the
//!   end-to-end suite of the `runnel` binary all create their databases here.
//! - [`http`]: the client side of the HTTP tests, against any base URL: [`Api`] (the
//!   requests the suites make), [`Reply`], [`send`], [`eventually`], [`redact`] and the
//!   wire-form assertions.
//! - [`app`]: [`TestApp::start`], a server in the test process built as `runnel serve`
//!   builds it, for the HTTP suites of runnel-server. The end-to-end suite of the binary
//!   (crates/runnel-cli/tests) spawns `runnel` instead and reaches it through the same
//!   [`Api`].
//! - [`s3`]: [`S3Server::start`], a real S3-compatible server on loopback that checks
//!   request signatures (header and presigned SigV4, with expiry), for the object-storage
//!   tests.

pub mod app;
pub mod http;
pub mod pg;
pub mod s3;

pub use app::{Server, TestApp};
pub use http::{
    assert_friendly_id, assert_no_nulls, assert_secret_key, eventually, eventually_explained,
    redact, send, timestamp, Api, Reply, CURRENT_API_VERSION, POLL_INTERVAL, SERVICE_TIMEOUT,
};
pub use pg::{backend, Backend, PgTestDatabase};
pub use runnel_engine::{BlobConfig, BlobLocation};
pub use s3::S3Server;
