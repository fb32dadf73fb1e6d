//! The server's master key ([`runnel_core::secrets`]): from `--encryption-key`
//! (`RUNNEL_ENCRYPTION_KEY`), or else from `<data-dir>/master.key`, which the first
//! start creates (64 hex digits, mode 0600). Several nodes sharing one database must
//! share one key, so they take it from the environment rather than each from a file of
//! its own. `--previous-encryption-keys` lists the keys a rotation retires.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use runnel_core::secrets::{MasterKey, MasterKeys};

/// The master key's file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Where the master key comes from.
#[derive(Debug, Clone, Args)]
pub struct MasterKeyArgs {
    /// The master key that seals secrets at rest (secret keys): 32 bytes as 64 hex
    /// digits or base64. Without it, `<data-dir>/master.key` (created on first start).
    /// Nodes sharing one database must all be given the same key.
    #[arg(long, env = "RUNNEL_ENCRYPTION_KEY", hide_env_values = true)]
    encryption_key: Option<String>,
    /// Master keys being retired, comma-separated: values sealed under them still open,
    /// and are re-sealed under the current key at start.
    #[arg(
        long,
        env = "RUNNEL_PREVIOUS_ENCRYPTION_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    previous_encryption_keys: Vec<String>,
}

impl MasterKeyArgs {
    /// Whether the key is given (flag or environment) rather than read from the data
    /// directory's `master.key`.
    pub fn is_given(&self) -> bool {
        self.encryption_key.is_some()
    }

    /// The keys: `--encryption-key`, else `data_dir`'s `master.key` (created when
    /// `create` and missing), and the previous keys.
    pub fn load(&self, data_dir: &Path, create: bool) -> Result<MasterKeys> {
        let current = match &self.encryption_key {
            Some(text) => MasterKey::parse(text)
                .context("--encryption-key (RUNNEL_ENCRYPTION_KEY) is not a valid key")?,
            None => from_file(data_dir, create)?,
        };
        let mut previous = Vec::new();
        for (i, text) in self
            .previous_encryption_keys
            .iter()
            .filter(|t| !t.trim().is_empty())
            .enumerate()
        {
            previous.push(MasterKey::parse(text).with_context(|| {
                format!(
                    "--previous-encryption-keys (RUNNEL_PREVIOUS_ENCRYPTION_KEYS): key {} is not a valid key",
                    i + 1
                )
            })?);
        }
        Ok(MasterKeys::new(current, previous))
    }
}

/// Reads `data_dir/master.key`, or (when `create`) makes it on first start.
fn from_file(data_dir: &Path, create: bool) -> Result<MasterKey> {
    let path = data_dir.join(MASTER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return MasterKey::parse(&text).with_context(|| {
                format!(
                    "{} does not hold a master key (64 hex digits)",
                    path.display()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if !create {
        anyhow::bail!(
            "no master key: there is no {} and no --encryption-key (RUNNEL_ENCRYPTION_KEY). \
             Give the server's key, or point --data-dir at the server's data directory",
            path.display()
        );
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let key = MasterKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(format!("{}\n", key.to_hex()).as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                key_id = key.id(),
                "created a new master key, which seals secrets at rest (secret keys, env var values): keep it with \
                 the database (without it they cannot be read). Several nodes sharing one \
                 database must share one key: give it to each with RUNNEL_ENCRYPTION_KEY"
            );
            Ok(key)
        }
        // Another process created it meanwhile: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => from_file(data_dir, false),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(current: Option<&str>, previous: &[&str]) -> MasterKeyArgs {
        MasterKeyArgs {
            encryption_key: current.map(str::to_owned),
            previous_encryption_keys: previous.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn the_file_is_created_once_with_mode_0600_and_read_back() {
        let dir = tempfile::TempDir::new().unwrap();
        let data = dir.path().join("data");
        assert!(args(None, &[]).load(&data, false).is_err());
        let first = args(None, &[]).load(&data, true).unwrap();
        let again = args(None, &[]).load(&data, false).unwrap();
        assert_eq!(first, again);
        let text = std::fs::read_to_string(data.join(MASTER_KEY_FILE)).unwrap();
        assert_eq!(text.trim(), first.current().to_hex());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(MASTER_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_given_key_wins_and_bad_keys_name_their_flag() {
        let dir = tempfile::TempDir::new().unwrap();
        let key = MasterKey::generate();
        let old = MasterKey::generate();
        let keys = args(Some(&key.to_hex()), &[&old.to_hex(), ""])
            .load(dir.path(), true)
            .unwrap();
        assert_eq!(keys.current(), &key);
        assert_eq!(keys.previous(), std::slice::from_ref(&old));
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
        let bad = args(Some("nope"), &[]).load(dir.path(), true).unwrap_err();
        assert!(format!("{bad:#}").contains("--encryption-key"), "{bad:#}");
        let bad = args(Some(&key.to_hex()), &["abc"])
            .load(dir.path(), true)
            .unwrap_err();
        assert!(
            format!("{bad:#}").contains("--previous-encryption-keys"),
            "{bad:#}"
        );
    }
}
