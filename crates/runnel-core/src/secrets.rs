//! Secrets at rest: values the server must read back in clear (secret keys, which sign
//! the public tokens the SDK makes itself; environment variables) are stored sealed with
//! AES-256-GCM under the server's master key, never in plain text.
//!
//! A sealed value reads `v1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`. The key id
//! (the first 8 hex digits of the SHA-256 of the master key) says which master key sealed
//! it, so a node can tell a value sealed under a key it lacks from a tampered one, and a
//! rotation can find what is still sealed under the old key. Each value is sealed with
//! a *context* (`api_key:<hash>`, `env_var:<environment>:<name>`) as associated data:
//! a sealed value copied onto another row does not open there.
//!
//! [`MasterKeys`] holds the current key (it seals) and the previous ones (they still open
//! what they sealed, until a rotation re-seals it under the current key).

use std::fmt;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The format tag every sealed value starts with.
const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
/// Bytes in a master key (AES-256).
pub const MASTER_KEY_LEN: usize = 32;

/// A 256-bit master key. Its `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    bytes: [u8; MASTER_KEY_LEN],
    id: String,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

/// Why a master key given as text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an encryption key is 32 bytes written as 64 hex digits or as base64 (44 characters); this one is not")]
pub struct MasterKeyError;

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> MasterKey {
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        MasterKey { bytes, id }
    }

    /// A new random key.
    pub fn generate() -> MasterKey {
        let mut bytes = [0u8; MASTER_KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        MasterKey::from_bytes(bytes)
    }

    /// Reads a key written as 64 hex digits or as standard or URL-safe base64, with or
    /// without padding; surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<MasterKey, MasterKeyError> {
        let text = text.trim();
        let decoded = if text.len() == MASTER_KEY_LEN * 2 {
            hex::decode(text).ok()
        } else {
            None
        }
        .or_else(|| {
            use base64::engine::general_purpose::{STANDARD, URL_SAFE};
            let unpadded = text.trim_end_matches('=');
            [&STANDARD, &URL_SAFE]
                .iter()
                .find_map(|engine| engine.decode(text).ok())
                .or_else(|| {
                    URL_SAFE_NO_PAD
                        .decode(unpadded.replace('+', "-").replace('/', "_"))
                        .ok()
                })
        });
        let bytes: [u8; MASTER_KEY_LEN] = decoded
            .and_then(|d| d.try_into().ok())
            .ok_or(MasterKeyError)?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// The key as 64 hex digits (what `master.key` holds).
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The key's id: the first 8 hex digits of its SHA-256 (not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keys derived for one purpose (`purpose` names it), so one master key serves
    /// several uses without any two sharing a key: HMAC-SHA256(master, purpose).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes)
            .expect("HMAC takes a key of any length");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.bytes).expect("a 32-byte key")
    }

    /// Seals `plaintext` under this key, bound to `context`.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of a bounded message");
        let mut body = nonce.to_vec();
        body.extend_from_slice(&ciphertext);
        format!("{VERSION}:{}:{}", self.id, URL_SAFE_NO_PAD.encode(body))
    }

    /// Opens a value this key sealed with `context`.
    fn open(&self, body: &str, context: &str) -> Result<String, OpenError> {
        let body = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if body.len() < NONCE_LEN {
            return Err(OpenError::Malformed);
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let plaintext = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError::Tampered)?;
        String::from_utf8(plaintext).map_err(|_| OpenError::Tampered)
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed value")]
    Malformed,
    #[error("sealed under master key {0}, which this server was not given")]
    UnknownKey(String),
    #[error("the sealed value does not open (altered, or sealed for another record)")]
    Tampered,
}

/// The key id a sealed value names, if it is one.
pub fn sealed_key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(VERSION), Some(id), Some(_)) => Some(id),
        _ => None,
    }
}

/// The current master key, which seals, and the previous ones, which only open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterKeys {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl MasterKeys {
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> MasterKeys {
        let previous = previous
            .into_iter()
            .filter(|k| k.id() != current.id())
            .collect();
        MasterKeys { current, previous }
    }

    /// One new random key and no previous ones: for tests and embedded uses that keep
    /// nothing across restarts.
    pub fn ephemeral() -> MasterKeys {
        MasterKeys::new(MasterKey::generate(), Vec::new())
    }

    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    pub fn previous(&self) -> &[MasterKey] {
        &self.previous
    }

    /// Whether a value sealed under the key with id `id` opens here.
    pub fn knows(&self, id: &str) -> bool {
        self.current.id() == id || self.previous.iter().any(|k| k.id() == id)
    }

    /// Seals under the current key.
    pub fn seal(&self, plaintext: &str, context: &str) -> String {
        self.current.seal(plaintext, context)
    }

    /// Opens a value sealed under the current or a previous key with `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<String, OpenError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(OpenError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id() == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        key.open(body, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_context_only() {
        let keys = MasterKeys::ephemeral();
        let sealed = keys.seal("tr_dev_secret", "api_key:abc");
        assert!(!sealed.contains("tr_dev_secret"));
        assert_eq!(sealed_key_id(&sealed), Some(keys.current().id()));
        assert_eq!(keys.open(&sealed, "api_key:abc").unwrap(), "tr_dev_secret");
        assert_eq!(
            keys.open(&sealed, "api_key:other"),
            Err(OpenError::Tampered)
        );
        let other = MasterKeys::ephemeral();
        assert_eq!(
            other.open(&sealed, "api_key:abc"),
            Err(OpenError::UnknownKey(keys.current().id().to_owned()))
        );
        // One character of the body changed.
        let mut bytes = sealed.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(keys.open(&altered, "api_key:abc"), Err(OpenError::Tampered));
        assert_eq!(keys.open("plain", "x"), Err(OpenError::Malformed));
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let keys = MasterKeys::ephemeral();
        assert_ne!(keys.seal("v", "c"), keys.seal("v", "c"));
    }

    #[test]
    fn previous_keys_open_what_they_sealed() {
        let old = MasterKey::generate();
        let sealed = old.seal("value", "env_var:e:NAME");
        let rotated = MasterKeys::new(MasterKey::generate(), vec![old.clone()]);
        assert!(rotated.knows(old.id()));
        assert_eq!(rotated.open(&sealed, "env_var:e:NAME").unwrap(), "value");
        let resealed = rotated.seal("value", "env_var:e:NAME");
        assert_eq!(sealed_key_id(&resealed), Some(rotated.current().id()));
    }

    #[test]
    fn keys_parse_from_hex_and_base64() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::parse(&key.to_hex()).unwrap(), key);
        use base64::engine::general_purpose::STANDARD;
        let b64 = STANDARD.encode(key.bytes);
        assert_eq!(MasterKey::parse(&format!(" {b64}\n")).unwrap(), key);
        assert_eq!(
            MasterKey::parse(&URL_SAFE_NO_PAD.encode(key.bytes)).unwrap(),
            key
        );
        for bad in ["", "abc", &key.to_hex()[..62], &"zz".repeat(32)] {
            assert_eq!(MasterKey::parse(bad), Err(MasterKeyError), "{bad}");
        }
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_are_stable() {
        let key = MasterKey::generate();
        assert_eq!(key.derive("blob-urls"), key.derive("blob-urls"));
        assert_ne!(key.derive("blob-urls"), key.derive("other"));
    }
}
