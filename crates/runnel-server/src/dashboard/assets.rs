//! The dashboard's stylesheet and script, embedded in the binary (`include_str!`) and
//! served as `/dashboard/assets/app-<hash>.css|js`, where `<hash>` is the start of the
//! file's SHA-256: a new build with a changed file gets a new URL, so the files are
//! cached for a year (`immutable`). A name with another hash is 404.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");
/// Hex characters of the content hash in an asset's name.
const HASH_CHARS: usize = 16;
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

struct Asset {
    name: String,
    body: &'static str,
    content_type: &'static str,
}

impl Asset {
    fn new(stem: &str, extension: &str, body: &'static str, content_type: &'static str) -> Self {
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        Asset {
            name: format!("{stem}-{}.{extension}", &hash[..HASH_CHARS]),
            body,
            content_type,
        }
    }

    fn url(&self) -> String {
        format!("/dashboard/assets/{}", self.name)
    }
}

static ASSETS: LazyLock<[Asset; 2]> = LazyLock::new(|| {
    [
        Asset::new("app", "css", CSS, "text/css; charset=utf-8"),
        Asset::new("app", "js", JS, "text/javascript; charset=utf-8"),
    ]
});

pub(crate) fn css_url() -> String {
    ASSETS[0].url()
}

pub(crate) fn js_url() -> String {
    ASSETS[1].url()
}

/// `GET /dashboard/assets/{name}`.
pub(crate) async fn serve(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
                (CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_urls_carry_their_content_hash() {
        let css = css_url();
        assert!(css.starts_with("/dashboard/assets/app-"), "{css}");
        assert!(css.ends_with(".css"));
        assert_ne!(css_url(), js_url());
        let hash = &css["/dashboard/assets/app-".len()..css.len() - ".css".len()];
        assert_eq!(hash.len(), HASH_CHARS);
        assert!(hex::encode(Sha256::digest(CSS.as_bytes())).starts_with(hash));
    }
}
