//! Request options accepted for compatibility but not honoured yet (docs/api.md lists
//! them): the first request of the process that uses one is logged at warn, once per
//! option, so an operator learns that a client relies on it without a log line per
//! request.

use std::sync::atomic::{AtomicBool, Ordering};

/// The options, by wire name, and whether each was already logged.
static OPTIONS: [(&str, AtomicBool); 4] = [
    ("debounce", AtomicBool::new(false)),
    ("region", AtomicBool::new(false)),
    ("concurrency", AtomicBool::new(false)),
    ("bulkActionId", AtomicBool::new(false)),
];

/// Logs each option of `used` (wire names) at warn, unless it was logged before.
pub(crate) fn warn_once(used: &[&'static str], context: &'static str) {
    for name in used {
        let Some((_, logged)) = OPTIONS.iter().find(|(option, _)| option == name) else {
            continue;
        };
        if !logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                option = *name,
                request = context,
                "option {name} is accepted but not supported yet: it has no effect (logged once)"
            );
        }
    }
}
