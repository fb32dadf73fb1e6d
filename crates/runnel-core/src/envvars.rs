//! Environment variables: what a name and a value may be, which names the platform keeps
//! for itself, and the dotenv text `POST …/envvars/{env}/import` takes.
//!
//! Rules (contract §2 rows 29–35, and upstream's own check, which accepts `^\w+$`):
//!
//! - a name is 1 to [`NAME_MAX_CHARS`] ASCII letters, digits and underscores;
//! - a value is at most [`VALUE_MAX_BYTES`] bytes of UTF-8 without NUL (a process
//!   environment cannot hold a NUL, and Linux caps one `NAME=value` string at 128 KiB).
//!
//! Names the platform sets itself are stored like any other but never handed to tasks
//! ([`is_platform_owned`]): `TRIGGER_SECRET_KEY`, `TRIGGER_API_URL` and `OTEL_*` (except
//! `OTEL_LOG_LEVEL`), as upstream leaves them out of a run's variables, so a `.env`
//! uploaded whole cannot point tasks at another server. Wherever the platform sets a
//! variable for a task (`TRIGGER_OTEL_…` in the dev CLI's attempt start, `RUNNEL_*` in an
//! exec command), its value wins over a user's variable of the same name.
//!
//! Values are sealed at rest under the server's master key, bound to their row by
//! [`seal_context`] (`env_var:<environment id>:<name>`): the store never sees one in clear.

use std::fmt;

use crate::EnvironmentId;

/// The longest name, in characters.
pub const NAME_MAX_CHARS: usize = 256;
/// The largest value, in bytes.
pub const VALUE_MAX_BYTES: usize = 64 * 1024;
/// What a secret variable's value reads as in a list or a retrieve.
pub const REDACTED: &str = "<redacted>";

/// A variable name that follows the rules above.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvVarName(String);

/// Why a name or a value is refused; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvVarError {
    #[error("invalid variable name {0:?}: use 1 to 256 letters, digits and underscores")]
    Name(String),
    #[error("variable {name}: the value is longer than {VALUE_MAX_BYTES} bytes")]
    ValueTooLong { name: String },
    #[error("variable {name}: the value contains a NUL character")]
    ValueNul { name: String },
}

impl EnvVarName {
    pub fn parse(name: &str) -> Result<EnvVarName, EnvVarError> {
        let valid = !name.is_empty()
            && name.len() <= NAME_MAX_CHARS
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid {
            Ok(EnvVarName(name.to_owned()))
        } else {
            Err(EnvVarError::Name(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvVarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a value of variable `name`.
pub fn check_value(name: &EnvVarName, value: &str) -> Result<(), EnvVarError> {
    if value.len() > VALUE_MAX_BYTES {
        return Err(EnvVarError::ValueTooLong {
            name: name.to_string(),
        });
    }
    if value.contains('\0') {
        return Err(EnvVarError::ValueNul {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The associated data a value of `name` in `environment` is sealed with.
pub fn seal_context(environment: &EnvironmentId, name: &str) -> String {
    format!("env_var:{}:{name}", environment.as_str())
}

/// Whether the platform sets `name` for tasks itself, so a stored variable of that name
/// is never handed to one.
pub fn is_platform_owned(name: &str) -> bool {
    matches!(name, "TRIGGER_SECRET_KEY" | "TRIGGER_API_URL")
        || (name.starts_with("OTEL_") && name != "OTEL_LOG_LEVEL")
}

/// A line of dotenv text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct DotenvError {
    pub line: usize,
    pub message: String,
}

/// Parses dotenv text: `NAME=value` lines, optionally `export NAME=value`; blank lines
/// and `#` comments are skipped; a value may be unquoted (trimmed, a ` #` starts a
/// comment), single-quoted (taken as written) or double-quoted (`\n`, `\r`, `\t`, `\"`
/// and `\\` escapes; it may span lines). Nothing is substituted: `$OTHER` stays as
/// written, so an upload can never read the server's own environment. Names are
/// returned as written (the caller checks them); a later line wins over an earlier one.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, String)>, DotenvError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let number = i + 1;
        let line = lines[i].trim_start_matches('\u{feff}').trim();
        i += 1;
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((name, rest)) = line.split_once('=') else {
            return Err(DotenvError {
                line: number,
                message: "expected NAME=value".to_owned(),
            });
        };
        let name = name.trim().to_owned();
        let rest = rest.trim_start();
        let value = if let Some(body) = rest.strip_prefix('\'') {
            match body.find('\'') {
                Some(end) => body[..end].to_owned(),
                None => {
                    return Err(DotenvError {
                        line: number,
                        message: "unterminated single quote".to_owned(),
                    })
                }
            }
        } else if let Some(body) = rest.strip_prefix('"') {
            // A double-quoted value may continue on the following lines.
            let mut raw = body.to_owned();
            loop {
                if let Some(value) = close_double_quoted(&raw) {
                    break value;
                }
                if i >= lines.len() {
                    return Err(DotenvError {
                        line: number,
                        message: "unterminated double quote".to_owned(),
                    });
                }
                raw.push('\n');
                raw.push_str(lines[i]);
                i += 1;
            }
        } else {
            let value = match rest.find(" #") {
                Some(comment) => &rest[..comment],
                None => rest,
            };
            value.trim().to_owned()
        };
        out.retain(|(n, _)| *n != name);
        out.push((name, value));
    }
    Ok(out)
}

/// The value of a double-quoted string whose opening quote is gone, with its escapes
/// applied; `None` while its closing quote has not come yet.
fn close_double_quoted(raw: &str) -> Option<String> {
    let mut value = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next() {
                Some('n') => value.push('\n'),
                Some('r') => value.push('\r'),
                Some('t') => value.push('\t'),
                Some(other @ ('"' | '\\')) => value.push(other),
                Some(other) => {
                    value.push('\\');
                    value.push(other);
                }
                None => value.push('\\'),
            },
            other => value.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_upstream_word_rule() {
        for ok in ["A", "_", "DATABASE_URL", "a1", "1A", &"X".repeat(256)] {
            assert!(EnvVarName::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "A-B", "A B", "é", "A=B", &"X".repeat(257), "A\0"] {
            assert!(EnvVarName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn values_refuse_nul_and_oversize() {
        let name = EnvVarName::parse("N").unwrap();
        assert!(check_value(&name, "").is_ok());
        assert!(check_value(&name, &"v".repeat(VALUE_MAX_BYTES)).is_ok());
        assert!(check_value(&name, &"v".repeat(VALUE_MAX_BYTES + 1)).is_err());
        assert!(check_value(&name, "a\0b").is_err());
    }

    #[test]
    fn platform_owned_names() {
        for owned in ["TRIGGER_SECRET_KEY", "TRIGGER_API_URL", "OTEL_EXPORTER"] {
            assert!(is_platform_owned(owned), "{owned}");
        }
        for free in ["OTEL_LOG_LEVEL", "TRIGGER_VERSION", "API_URL", "RUNNEL_X"] {
            assert!(!is_platform_owned(free), "{free}");
        }
    }

    #[test]
    fn dotenv_parses_quotes_comments_and_export() {
        let text = "# comment\n\nA=1\nexport B = two words # note\nC='$HOME \\n'\n\
                    D=\"line\\nnext \\\"q\\\"\"\nE=\"multi\nline\"\nA=again\nF=\n";
        let parsed = parse_dotenv(text).unwrap();
        let want: Vec<(String, String)> = [
            ("B", "two words"),
            ("C", "$HOME \\n"),
            ("D", "line\nnext \"q\""),
            ("E", "multi\nline"),
            ("A", "again"),
            ("F", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(parsed, want);
    }

    #[test]
    fn dotenv_reports_the_bad_line() {
        assert_eq!(
            parse_dotenv("A=1\nnot a pair\n").unwrap_err(),
            DotenvError {
                line: 2,
                message: "expected NAME=value".to_owned()
            }
        );
        assert_eq!(parse_dotenv("A=\"open\n").unwrap_err().line, 1);
        assert_eq!(parse_dotenv("A='open\n").unwrap_err().line, 1);
    }
}
