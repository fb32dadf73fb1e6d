//! A signed-in browser, as the pages see it: its environment and the CSRF token its
//! forms carry. Made and checked by [`super::session`]; rendered around by [`super::page`].

use hmac::{Hmac, Mac};
use maud::{html, Markup};
use runnel_core::tenancy::Environment;
use sha2::Sha256;

/// What a session's CSRF token is the HMAC of (keyed by the session token).
const CSRF_LABEL: &[u8] = b"runnel-dashboard csrf v1";

/// A signed-in browser: the environment it sees, and the key it signed in with.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub environment: Environment,
    /// The display prefix of the key the session was made from.
    pub key_prefix: String,
    pub(crate) token: String,
}

impl Session {
    /// The CSRF token of this session: hex HMAC-SHA256 of the session token.
    pub fn csrf(&self) -> String {
        csrf_of(&self.token)
    }

    /// The hidden `csrf` field every POST form carries.
    pub fn csrf_input(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf()); }
    }
}

pub(crate) fn csrf_of(token: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(CSRF_LABEL);
    hex::encode(mac.finalize().into_bytes())
}
