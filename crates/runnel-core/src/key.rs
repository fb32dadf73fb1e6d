//! Environments and their secret API keys.
//!
//! A secret key is `tr_<env>_` + 24 characters of `[0-9a-zA-Z]`. Only its SHA-256 digest
//! is stored, plus a short display prefix so an operator can tell keys apart and revoke
//! one; the full key is shown once, when it is created.

use std::fmt;
use std::str::FromStr;

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

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
}
