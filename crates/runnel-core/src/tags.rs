//! Tags of a run: their limits ([`MAX_TAGS`], [`MAX_TAG_LEN`]), which the trigger and
//! the OpenAPI schemas also use, and adding tags to an existing run
//! (`POST /api/v1/runs/{id}/tags`, contract §2.1 row 16): validation of the body's tags
//! and the union with the run's own, capped at [`MAX_TAGS`].

/// Most tags a run may carry (upstream's limit).
pub const MAX_TAGS: usize = 10;
/// Longest tag, in characters.
pub const MAX_TAG_LEN: usize = 128;

/// Why tags could not be added.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TagsError {
    /// A tag longer than [`MAX_TAG_LEN`] characters or holding NUL (400).
    #[error("tags: each tag must be 1 to {MAX_TAG_LEN} characters without NUL")]
    Invalid,
    /// The union would exceed [`MAX_TAGS`] (422, the contract's message).
    #[error("Runs can only have {MAX_TAGS} tags, you're trying to set {total}. These tags have not been set: {}.", quoted(.rejected))]
    TooMany { total: usize, rejected: Vec<String> },
}

fn quoted(tags: &[String]) -> String {
    tags.iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the requested tags: too long or NUL refused, blanks dropped, duplicates removed
/// (first occurrence kept).
pub fn requested(raw: Vec<String>) -> Result<Vec<String>, TagsError> {
    let mut tags: Vec<String> = Vec::with_capacity(raw.len());
    for tag in raw {
        if tag.chars().count() > MAX_TAG_LEN || tag.contains('\0') {
            return Err(TagsError::Invalid);
        }
        if !tag.trim().is_empty() && !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// The run's tags after adding `new` to `existing` (sorted, no duplicates), and how many
/// were new.
pub fn union(existing: &[String], new: &[String]) -> Result<(Vec<String>, usize), TagsError> {
    let added: Vec<String> = new
        .iter()
        .filter(|t| !existing.contains(t))
        .cloned()
        .collect();
    let total = existing.len() + added.len();
    if total > MAX_TAGS {
        return Err(TagsError::TooMany {
            total,
            rejected: added,
        });
    }
    let mut tags: Vec<String> = existing.iter().chain(&added).cloned().collect();
    tags.sort();
    Ok((tags, added.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn requested_drops_blanks_and_duplicates() {
        assert_eq!(
            requested(strings(&["b", " ", "", "a", "b"])).unwrap(),
            strings(&["b", "a"])
        );
        assert_eq!(requested(vec!["x".repeat(129)]), Err(TagsError::Invalid));
        assert!(requested(vec!["x".repeat(128)]).is_ok());
    }

    #[test]
    fn union_sorts_and_counts_new_tags() {
        let (tags, added) = union(&strings(&["b", "d"]), &strings(&["c", "b", "a"])).unwrap();
        assert_eq!(tags, strings(&["a", "b", "c", "d"]));
        assert_eq!(added, 2);
        let (tags, added) = union(&strings(&["a"]), &strings(&["a"])).unwrap();
        assert_eq!((tags, added), (strings(&["a"]), 0));
    }

    #[test]
    fn union_over_the_cap_names_the_rejected_tags() {
        let existing: Vec<String> = (0..9).map(|i| format!("t{i}")).collect();
        let error = union(&existing, &strings(&["t0", "x", "y"])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "Runs can only have 10 tags, you're trying to set 11. These tags have not been set: 'x', 'y'."
        );
    }
}
