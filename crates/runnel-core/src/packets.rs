//! Packet storage paths (contract §4.6): where a payload or output offloaded to object
//! storage lives, relative to its environment.
//!
//! A path is what the SDK asks a presigned URL for (`trigger/<task>/<ts>-<rand>/payload.json`)
//! or what the server names itself (`<runId>/payload.json`, `<runId>/output-<attemptId>.json`).
//! It never leaves its environment: the object key is always
//! `packets/<project id>/<environment slug>/<path>`, so a path must not be able to climb
//! out of that prefix (`..`), and must map to exactly one key (no empty or `.` segments).

use crate::id::{AttemptId, RunId};

/// The longest packet path accepted, in bytes.
pub const PATH_MAX_BYTES: usize = 1024;

/// Why a packet path was refused (the message a 400 carries after the field name).
pub fn path_check(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("must not be empty");
    }
    if path.len() > PATH_MAX_BYTES {
        return Err("must be at most 1024 bytes");
    }
    if path.chars().any(|c| c.is_control()) {
        return Err("must not contain NUL or other control characters");
    }
    if path.contains('\\') {
        return Err("must not contain backslashes");
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("must not have empty segments (a leading, trailing or double slash)"),
            "." | ".." => return Err("must not have `.` or `..` segments"),
            _ => {}
        }
    }
    Ok(())
}

/// Where the server offloads a run's inline payload.
pub fn payload_path(run: &RunId) -> String {
    format!("{run}/payload.json")
}

/// Where the server offloads an attempt's inline output.
pub fn output_path(run: &RunId, attempt: &AttemptId) -> String {
    format!("{run}/output-{attempt}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in [
            "trigger/my-task/1700000000-abc/payload.json",
            "run_1/payload.json",
            "a",
            "with space/and%percent/ünïcode.txt",
        ] {
            assert_eq!(path_check(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(PATH_MAX_BYTES + 1);
        for bad in [
            "",
            "/leading",
            "trailing/",
            "double//slash",
            "../escape",
            "a/../../b",
            "a/./b",
            ".",
            "nul\0byte",
            "new\nline",
            "back\\slash",
            long.as_str(),
        ] {
            assert!(path_check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(path_check(&"a".repeat(PATH_MAX_BYTES)), Ok(()));
    }
}
