//! The test S3 server checks signatures as S3 does: these tests would pass against a
//! server that accepts anything only if they asserted nothing, so each one shows a
//! refusal next to the matching success.

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStoreExt, PutPayload};
use runnel_testkit::S3Server;

fn client(server: &S3Server, secret: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_allow_http(true)
        .with_bucket_name(&server.bucket)
        .with_region(&server.region)
        .with_access_key_id(&server.access_key_id)
        .with_secret_access_key(secret)
        .build()
        .expect("s3 client")
}

#[tokio::test]
async fn header_signed_requests_with_the_right_secret_pass_and_with_a_wrong_one_are_refused() {
    let server = S3Server::start();
    let good = client(&server, &server.secret_access_key);
    let path = Path::from("packets/a.json");
    good.put(&path, PutPayload::from_static(b"{\"a\":1}"))
        .await
        .expect("put with the right secret");
    let body = good.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&body[..], b"{\"a\":1}");
    assert_eq!(server.object_keys(), vec!["packets/a.json".to_owned()]);

    let bad = client(&server, "not-the-secret");
    let err = bad
        .put(
            &Path::from("packets/b.json"),
            PutPayload::from_static(b"{}"),
        )
        .await
        .expect_err("a put signed with a wrong secret is refused");
    assert!(
        err.to_string().contains("403") || err.to_string().contains("SignatureDoesNotMatch"),
        "{err}"
    );
    bad.get(&path)
        .await
        .expect_err("a get signed with a wrong secret is refused");
    assert_eq!(server.object_keys(), vec!["packets/a.json".to_owned()]);

    // and an unsigned request is no way round it
    let url = format!("{}/{}/packets/a.json", server.endpoint, server.bucket);
    let unsigned = reqwest::get(&url).await.unwrap();
    assert_eq!(unsigned.status(), 403);
}

#[tokio::test]
async fn a_presigned_url_works_until_changed_in_one_signature_byte_or_expired() {
    let server = S3Server::start();
    let store = client(&server, &server.secret_access_key);
    let path = Path::from("packets/run_1/payload.json");
    let http = reqwest::Client::new();

    // a presigned PUT uploads with a content type, a presigned GET reads it back with it
    let put_url = store
        .signed_url(Method::PUT, &path, Duration::from_secs(300))
        .await
        .unwrap();
    let put = http
        .put(put_url.as_str())
        .header("content-type", "application/json")
        .body("{\"big\":true}")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    assert_eq!(
        server.object_bytes("packets/run_1/payload.json").as_deref(),
        Some(&b"{\"big\":true}"[..])
    );

    let get_url = store
        .signed_url(Method::GET, &path, Duration::from_secs(300))
        .await
        .unwrap();
    let got = http.get(get_url.as_str()).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(
        got.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(got.text().await.unwrap(), "{\"big\":true}");

    // one byte of the signature changed
    let tampered = change_signature_byte(get_url.as_str());
    assert_ne!(tampered, get_url.as_str());
    let refused = http.get(&tampered).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("SignatureDoesNotMatch"));

    // the same for an upload: nothing is written
    let tampered_put = change_signature_byte(put_url.as_str());
    let refused = http
        .put(&tampered_put)
        .body("overwritten")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(
        server.object_bytes("packets/run_1/payload.json").as_deref(),
        Some(&b"{\"big\":true}"[..])
    );

    // expired: signed for one second (S3 counts whole seconds from X-Amz-Date)
    let short = store
        .signed_url(Method::GET, &path, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(http.get(short.as_str()).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let expired = http.get(short.as_str()).send().await.unwrap();
    assert_eq!(expired.status(), 403);
    assert!(expired.text().await.unwrap().contains("expired"));
}

/// The URL with the first hex digit of `X-Amz-Signature` replaced by another.
fn change_signature_byte(url: &str) -> String {
    let marker = "X-Amz-Signature=";
    let at = url.find(marker).expect("a SigV4 presigned url") + marker.len();
    let mut bytes = url.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).unwrap()
}
