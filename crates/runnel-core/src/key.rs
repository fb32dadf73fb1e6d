//! Environments, their secret API keys, and personal access tokens.
//!
//! A secret key is `tr_<env>_` + 24 characters of `[0-9a-zA-Z]`. Only its SHA-256 digest
//! is stored, plus a short display prefix so an operator can tell keys apart and revoke
//! one; the full key is shown once, when it is created.
//!
//! A personal access token ([`PersonalAccessToken`], `tr_pat_` + 40 of `[0-9a-zA-Z]`) is
//! what the `trigger.dev` CLI logs in with before it knows an environment: it names the
//! project, not an environment, and is stored the same way (digest and display prefix).
//! The CLI trades it for an environment's secret key; that key is *derived* from the
//! token ([`PersonalAccessToken::derive_key`]), so the same token always gets the same
//! key although neither is stored in plain text.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

use crate::id::EnvironmentId;

/// Characters after the `tr_<env>_` prefix.
pub const SECRET_KEY_BODY_LEN: usize = 24;
/// Characters of the body kept in the display prefix.
const DISPLAY_BODY_LEN: usize = 6;

/// The kind of an environment; each project has one of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvironmentKind {
    Dev,
    Staging,
    Prod,
}

impl EnvironmentKind {
    pub const ALL: [EnvironmentKind; 3] = [
        EnvironmentKind::Dev,
        EnvironmentKind::Staging,
        EnvironmentKind::Prod,
    ];

    /// The slug users type (`--env dev|staging|prod`) and that we store.
    pub fn slug(self) -> &'static str {
        match self {
            EnvironmentKind::Dev => "dev",
            EnvironmentKind::Staging => "staging",
            EnvironmentKind::Prod => "prod",
        }
    }

    /// The short name used inside keys (`tr_stg_…`).
    pub fn key_tag(self) -> &'static str {
        match self {
            EnvironmentKind::Dev => "dev",
            EnvironmentKind::Staging => "stg",
            EnvironmentKind::Prod => "prod",
        }
    }
}

impl EnvironmentKind {
    /// The environment type Trigger.dev's API names (`DEVELOPMENT`, `STAGING`,
    /// `PRODUCTION`).
    pub fn api_type(self) -> &'static str {
        match self {
            EnvironmentKind::Dev => "DEVELOPMENT",
            EnvironmentKind::Staging => "STAGING",
            EnvironmentKind::Prod => "PRODUCTION",
        }
    }
}

impl fmt::Display for EnvironmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// An environment name outside `dev`, `staging`, `prod`.
#[derive(Debug, thiserror::Error)]
#[error("unknown environment {0:?} (expected dev, staging or prod)")]
pub struct UnknownEnvironment(pub String);

impl FromStr for EnvironmentKind {
    type Err = UnknownEnvironment;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dev" => Ok(EnvironmentKind::Dev),
            "staging" | "stg" => Ok(EnvironmentKind::Staging),
            "prod" => Ok(EnvironmentKind::Prod),
            other => Err(UnknownEnvironment(other.to_owned())),
        }
    }
}

/// A secret API key in full. Exists only when a key is created or presented.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}…)", self.display_prefix())
    }
}

impl SecretKey {
    /// A fresh random key for an environment of this kind.
    pub fn generate(kind: EnvironmentKind) -> Self {
        let body = Alphanumeric.sample_string(&mut rand::rng(), SECRET_KEY_BODY_LEN);
        SecretKey(format!("tr_{}_{}", kind.key_tag(), body))
    }

    /// Accepts a presented bearer token when it has the shape of a root secret key.
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix("tr_")?;
        let (tag, body) = rest.split_once('_')?;
        let known_tag = EnvironmentKind::ALL.iter().any(|k| k.key_tag() == tag);
        let body_ok =
            body.len() == SECRET_KEY_BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric());
        (known_tag && body_ok).then(|| SecretKey(token.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the key: what storage keeps and looks keys up by.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// `tr_dev_` plus the first six characters of the body: safe to print and store.
    pub fn display_prefix(&self) -> String {
        let tag_end = self.0.len() - SECRET_KEY_BODY_LEN;
        self.0[..tag_end + DISPLAY_BODY_LEN].to_owned()
    }
}

/// What every personal access token starts with.
pub const PERSONAL_ACCESS_TOKEN_PREFIX: &str = "tr_pat_";
/// Characters after [`PERSONAL_ACCESS_TOKEN_PREFIX`].
pub const PERSONAL_ACCESS_TOKEN_BODY_LEN: usize = 40;

/// A personal access token in full: a user of the `trigger.dev` CLI, with access to the
/// project. Exists only when a token is created or presented.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonalAccessToken(String);

impl fmt::Debug for PersonalAccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PersonalAccessToken({}…)", self.display_prefix())
    }
}

impl PersonalAccessToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let body = Alphanumeric.sample_string(&mut rand::rng(), PERSONAL_ACCESS_TOKEN_BODY_LEN);
        PersonalAccessToken(format!("{PERSONAL_ACCESS_TOKEN_PREFIX}{body}"))
    }

    /// Accepts a presented bearer token when it has the shape of a personal access token.
    pub fn parse(token: &str) -> Option<Self> {
        let body = token.strip_prefix(PERSONAL_ACCESS_TOKEN_PREFIX)?;
        let body_ok = body.len() == PERSONAL_ACCESS_TOKEN_BODY_LEN
            && body.bytes().all(|b| b.is_ascii_alphanumeric());
        body_ok.then(|| PersonalAccessToken(token.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the token: what storage keeps and looks tokens up by.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// `tr_pat_` plus the first six characters of the body: safe to print and store.
    pub fn display_prefix(&self) -> String {
        self.0[..PERSONAL_ACCESS_TOKEN_PREFIX.len() + DISPLAY_BODY_LEN].to_owned()
    }

    /// The secret key of environment `environment` (of kind `kind`) that this token
    /// trades for: `tr_<env>_` + 24 alphanumerics read from HMAC-SHA256(key = this
    /// token, message = the environment id). The same token always derives the same key,
    /// a different token or environment a different one, and the key tells nothing
    /// about the token. Only whoever holds the token can compute it, which is why the
    /// server may store it hashed like any other key and still hand it out again.
    pub fn derive_key(&self, kind: EnvironmentKind, environment: &EnvironmentId) -> SecretKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(environment.as_str().as_bytes());
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        SecretKey(format!(
            "tr_{}_{}",
            kind.key_tag(),
            base62_tail(digest, SECRET_KEY_BODY_LEN)
        ))
    }
}

/// The last `len` digits of the big-endian number `bytes` written in base 62
/// (`0-9A-Za-z`). 256 bits hold 42 such digits, so `len` up to 42 is uniform enough:
/// each digit is the remainder of a long division, not a byte folded onto 62 values.
fn base62_tail(mut bytes: [u8; 32], len: usize) -> String {
    const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut remainder: u32 = 0;
        for byte in bytes.iter_mut() {
            let value = (remainder << 8) | u32::from(*byte);
            *byte = (value / 62) as u8;
            remainder = value % 62;
        }
        out.push(DIGITS[remainder as usize]);
    }
    out.reverse();
    String::from_utf8(out).expect("base 62 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        for (kind, prefix) in [
            (EnvironmentKind::Dev, "tr_dev_"),
            (EnvironmentKind::Staging, "tr_stg_"),
            (EnvironmentKind::Prod, "tr_prod_"),
        ] {
            let key = SecretKey::generate(kind);
            assert!(key.expose().starts_with(prefix));
            assert_eq!(key.expose().len(), prefix.len() + SECRET_KEY_BODY_LEN);
            assert_eq!(SecretKey::parse(key.expose()), Some(key.clone()));
            assert_eq!(key.display_prefix().len(), prefix.len() + 6);
            assert!(key.expose().starts_with(&key.display_prefix()));
        }
    }

    #[test]
    fn parse_rejects_other_tokens() {
        for bad in [
            "",
            "tr_dev_short",
            "tr_xyz_abcdefghijklmnopqrstuvwx",
            "pk_dev_abcdefghijklmnopqrstuvwx",
            "tr_dev_abcdefghijklmnopqrstuvw!",
            "tr_dev_abcdefghijklmnopqrstuvwxy",
        ] {
            assert!(SecretKey::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn hash_is_stable_hex_and_differs_per_key() {
        let a = SecretKey::generate(EnvironmentKind::Dev);
        let b = SecretKey::generate(EnvironmentKind::Dev);
        assert_eq!(a.hash(), a.hash());
        assert_eq!(a.hash().len(), 64);
        assert_ne!(a.hash(), b.hash());
        assert!(!a.hash().contains(a.expose()));
    }

    #[test]
    fn personal_access_tokens_have_the_documented_shape() {
        let token = PersonalAccessToken::generate();
        assert!(token.expose().starts_with("tr_pat_"));
        assert_eq!(token.expose().len(), 7 + 40);
        assert_eq!(
            PersonalAccessToken::parse(token.expose()),
            Some(token.clone())
        );
        assert_eq!(token.display_prefix().len(), 7 + 6);
        assert!(token.expose().starts_with(&token.display_prefix()));
        assert_eq!(token.hash().len(), 64);
        assert_ne!(token.hash(), PersonalAccessToken::generate().hash());
        assert!(!format!("{token:?}").contains(token.expose()));
        // A personal access token is not a secret key, and a secret key is not a token.
        assert!(SecretKey::parse(token.expose()).is_none());
        let key = SecretKey::generate(EnvironmentKind::Dev);
        assert!(PersonalAccessToken::parse(key.expose()).is_none());
        for bad in [
            "",
            "tr_pat_short",
            "tr_pat_0123456789012345678901234567890123456789x",
            "tr_pat_012345678901234567890123456789012345678!",
            "tr_oat_0123456789012345678901234567890123456789",
        ] {
            assert!(PersonalAccessToken::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn derived_keys_are_stable_per_token_and_environment() {
        let token = PersonalAccessToken::generate();
        let other = PersonalAccessToken::generate();
        let dev = EnvironmentId::generate(1);
        let prod = EnvironmentId::generate(2);
        let key = token.derive_key(EnvironmentKind::Dev, &dev);
        assert_eq!(key, token.derive_key(EnvironmentKind::Dev, &dev));
        assert_eq!(SecretKey::parse(key.expose()), Some(key.clone()));
        assert!(key.expose().starts_with("tr_dev_"));
        assert_ne!(key, other.derive_key(EnvironmentKind::Dev, &dev));
        let prod_key = token.derive_key(EnvironmentKind::Prod, &prod);
        assert!(prod_key.expose().starts_with("tr_prod_"));
        assert_ne!(&prod_key.expose()[8..], &key.expose()[7..]);
        assert!(!key.expose().contains(&token.expose()[7..15]));
    }

    /// The derivation pinned to a value computed independently (HMAC-SHA256 of the
    /// environment id keyed by the token, read as a base-62 number): a change here would
    /// hand every CLI a new key, and their old ones would stop being handed out.
    #[test]
    fn derivation_is_hmac_sha256_read_in_base_62() {
        let token = PersonalAccessToken::parse(&format!("tr_pat_{}", "a".repeat(40))).unwrap();
        let environment = EnvironmentId::parse("env_0123456789abcdefghijklmn").unwrap();
        assert_eq!(
            token
                .derive_key(EnvironmentKind::Dev, &environment)
                .expose(),
            "tr_dev_PG8ODXUXmaWSRTWECdyVNvJZ"
        );
        assert_eq!(base62_tail([0; 32], 4), "0000");
        let mut n = [0u8; 32];
        n[31] = 61;
        assert_eq!(base62_tail(n, 3), "00z");
        n[31] = 62;
        assert_eq!(base62_tail(n, 3), "010");
        // 0x0f0b = 3851 = 62² + 7
        n[30] = 0x0f;
        n[31] = 0x0b;
        assert_eq!(base62_tail(n, 3), "107");
    }
}
