//! Large payloads and outputs in the server's object storage ("packets").
//!
//! A payload or output whose JSON is [`OFFLOAD_THRESHOLD_BYTES`] or more does not travel
//! inline: its bytes go to object storage and the run carries only their storage path
//! with the type [`STORE_TYPE`] (`application/store`), as the TypeScript SDK does.
//!
//! ```text
//!  upload:   PUT /api/v2/packets/{path}  (secret key)  -> {presignedUrl, storagePath}
//!            PUT presignedUrl  Content-Type: application/json  <bytes>
//!  download: the dequeued run's payloadPresignedUrl, else
//!            GET /api/v1/packets/{path}  (secret key)  -> {presignedUrl}
//!            GET presignedUrl  -> bytes, with the packet's content type
//! ```
//!
//! A presigned URL carries its own authorization (an S3 signature or the server's own
//! HMAC), so it is fetched without the secret key: S3 refuses a request that is signed
//! twice. A relative URL is resolved against the server's URL.
//!
//! The worker runtime ([`crate::Worker`]) uses this for every attempt, so Rust tasks and
//! exec workers alike see the real payload and may return outputs of any size:
//! - a dequeued run of payload type `application/store` is downloaded before the task
//!   starts; if that fails, the attempt fails (`TaskFailed`, so it is retried) with a
//!   message naming the packet;
//! - a success whose output serializes to [`OFFLOAD_THRESHOLD_BYTES`] or more is uploaded
//!   to `{runId}/output-{attemptId}.json` and completed as `application/store`; if the
//!   upload fails, the attempt fails (`TaskFailed`, retried) rather than sending the
//!   large output inline, which the server may refuse or hold in its database.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::{segment, Client, Error};

// The threshold and the type live with the client, which offloads trigger payloads too.
pub(crate) use crate::client::oversized_json;
pub use crate::client::{OFFLOAD_THRESHOLD_BYTES, STORE_TYPE};
/// Timeout of one packet transfer (upload or download of the bytes).
pub const PACKET_TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadUrl {
    presigned_url: String,
    #[serde(default)]
    storage_path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DownloadUrl {
    presigned_url: String,
}

/// A packet as downloaded: its bytes and the content type its URL answered with.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl Packet {
    /// The packet's value, read by its content type: `application/json` as JSON,
    /// `application/super+json` as its `json` part, `text/*` as a string.
    pub fn decode(&self) -> Result<Value, String> {
        let essence = self
            .content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => serde_json::from_slice(&self.bytes)
                .map_err(|err| format!("the packet is not valid JSON: {err}")),
            "application/super+json" => {
                let mut value: Value = serde_json::from_slice(&self.bytes)
                    .map_err(|err| format!("the packet is not valid superjson: {err}"))?;
                match value.get_mut("json") {
                    Some(json) => Ok(json.take()),
                    None => Err("the superjson packet has no `json` part".to_owned()),
                }
            }
            text if text.starts_with("text/") => String::from_utf8(self.bytes.clone())
                .map(Value::String)
                .map_err(|_| "the text packet is not UTF-8".to_owned()),
            other => Err(format!(
                "packets of content type {other:?} are not supported"
            )),
        }
    }
}

/// `a/b c.json` -> `a/b%20c.json`: each segment encoded, the slashes kept.
fn packet_route(path: &str) -> String {
    path.trim_start_matches('/')
        .split('/')
        .map(segment)
        .collect::<Vec<_>>()
        .join("/")
}

impl Client {
    /// `PUT /api/v2/packets/{path}`: a presigned URL to upload the packet at `path`, and
    /// the storage path to hand the server (the path itself when the answer has none).
    pub async fn packet_upload_url(&self, path: &str) -> Result<(String, String), Error> {
        let route = format!("/api/v2/packets/{}", packet_route(path));
        let answer: UploadUrl = self
            .call(
                Method::PUT,
                &route,
                None::<&()>,
                crate::client::REQUEST_TIMEOUT,
            )
            .await?;
        let storage_path = answer.storage_path.unwrap_or_else(|| path.to_owned());
        Ok((self.absolute(&answer.presigned_url), storage_path))
    }

    /// `GET /api/v1/packets/{path}`: a presigned URL that downloads the packet at `path`.
    pub async fn packet_download_url(&self, path: &str) -> Result<String, Error> {
        let route = format!("/api/v1/packets/{}", packet_route(path));
        let answer: DownloadUrl = self
            .call(
                Method::GET,
                &route,
                None::<&()>,
                crate::client::REQUEST_TIMEOUT,
            )
            .await?;
        Ok(self.absolute(&answer.presigned_url))
    }

    /// Uploads `bytes` of JSON as the packet at `path`; answers with its storage path.
    pub async fn packet_upload(&self, path: &str, bytes: Vec<u8>) -> Result<String, Error> {
        let (url, storage_path) = self.packet_upload_url(path).await?;
        let response = self
            .http_client()
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .timeout(PACKET_TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(Error::Transport)?;
        presigned_status(response, Method::PUT, path).await?;
        Ok(storage_path)
    }

    /// Downloads the packet at `url` (a presigned URL), or at storage `path` when there
    /// is no URL.
    pub async fn packet_download(&self, path: &str, url: Option<&str>) -> Result<Packet, Error> {
        let url = match url {
            Some(url) => self.absolute(url),
            None => self.packet_download_url(path).await?,
        };
        let response = self
            .http_client()
            .get(&url)
            .timeout(PACKET_TRANSFER_TIMEOUT)
            .send()
            .await
            .map_err(Error::Transport)?;
        let response = presigned_status(response, Method::GET, path).await?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let bytes = response.bytes().await.map_err(Error::Transport)?.to_vec();
        Ok(Packet {
            content_type,
            bytes,
        })
    }

    /// Downloads and decodes the packet at `path` (see [`Packet::decode`]).
    pub async fn packet_value(&self, path: &str, url: Option<&str>) -> Result<Value, Error> {
        let packet = self.packet_download(path, url).await?;
        packet.decode().map_err(|message| Error::Packet {
            path: path.to_owned(),
            message,
        })
    }

    /// `url` as is when absolute, else resolved against the server's URL.
    fn absolute(&self, url: &str) -> String {
        if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            format!("{}/{}", self.api_url(), url.trim_start_matches('/'))
        }
    }
}

/// A presigned URL's answer: the response when 2xx, else [`Error::Http`] with the body's
/// first characters (an S3 error is XML, the server's JSON).
async fn presigned_status(
    response: reqwest::Response,
    method: Method,
    path: &str,
) -> Result<reqwest::Response, Error> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.chars().take(300).collect();
    Err(Error::Http {
        status,
        message: format!("{method} of packet {path} via its presigned URL: {body}"),
        details: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packets_decode_by_content_type() {
        let cases: Vec<(&str, &[u8], Result<Value, &str>)> = vec![
            (
                "application/json",
                br#"{"a":[1,2]}"#,
                Ok(json!({"a": [1, 2]})),
            ),
            ("application/json; charset=utf-8", b"\"s\"", Ok(json!("s"))),
            (
                "application/super+json",
                br#"{"json":{"d":"2024-01-01T00:00:00.000Z"},"meta":{"values":{"d":["Date"]}}}"#,
                Ok(json!({"d": "2024-01-01T00:00:00.000Z"})),
            ),
            ("text/plain", b"hello", Ok(json!("hello"))),
            ("application/json", b"{nope", Err("not valid JSON")),
            ("application/super+json", b"{}", Err("no `json` part")),
            ("image/png", b"x", Err("not supported")),
        ];
        for (content_type, bytes, expected) in cases {
            let packet = Packet {
                content_type: content_type.to_owned(),
                bytes: bytes.to_vec(),
            };
            match (packet.decode(), expected) {
                (Ok(value), Ok(want)) => assert_eq!(value, want, "{content_type}"),
                (Err(message), Err(want)) => {
                    assert!(message.contains(want), "{content_type}: {message}")
                }
                (got, want) => panic!("{content_type}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_threshold_is_on_the_serialized_size() {
        let just_under = Value::String("x".repeat(OFFLOAD_THRESHOLD_BYTES - 3));
        assert_eq!(
            serde_json::to_vec(&just_under).unwrap().len(),
            OFFLOAD_THRESHOLD_BYTES - 1
        );
        assert!(oversized_json(&just_under).is_none());
        let at = Value::String("x".repeat(OFFLOAD_THRESHOLD_BYTES - 2));
        assert_eq!(
            oversized_json(&at).map(|bytes| bytes.len()),
            Some(OFFLOAD_THRESHOLD_BYTES)
        );
    }

    #[test]
    fn packet_routes_keep_slashes_and_encode_segments() {
        assert_eq!(
            packet_route("run_1/output-a b.json"),
            "run_1/output-a%20b.json"
        );
        assert_eq!(packet_route("/x/y.json"), "x/y.json");
    }
}
