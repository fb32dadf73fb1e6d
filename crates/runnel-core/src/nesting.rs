//! How deeply JSON may nest, and how that is measured without recursion.
//!
//! Why a limit at all: serde_json parses, prints, compares, clones and drops a
//! [`Value`] recursively, one stack frame per level. Its parser refuses input nested
//! deeper than 128 levels, but a value *built* from request data (a metadata path like
//! `$.a.a.a…` creates one object per segment) has no such bound: 7,000 segments
//! overflowed a worker thread's stack and aborted the process. And a value stored deeper
//! than the parser's limit can never be read back (a replay re-parses the run's metadata;
//! the Rust SDK parses every response).
//!
//! Two limits, both counted in containers (`{}` or `[]`) on the deepest path, so a
//! scalar is 0 deep, `{}` 1 and `{"a": [1]}` 2:
//! - [`MAX_BODY_DEPTH`]: a whole request body, checked on the raw bytes before parsing;
//!   below the parser's own limit (127), so a refusal names it rather than saying
//!   "Invalid JSON";
//! - [`MAX_VALUE_DEPTH`]: any value the server stores and hands out again (payloads,
//!   outputs, metadata). Half the body limit, so a stored value still parses when a
//!   response or a request wraps it in a few more levels (a dequeue response holds a
//!   payload 3 levels down, a metadata response 1).
//!
//! Both measures below ([`text_depth`], [`value_depth`]) walk with a counter or an
//! explicit stack, never by recursion, so they are safe on any input.

use serde_json::Value;

/// The deepest request body accepted (serde_json's parser stops at 127).
pub const MAX_BODY_DEPTH: usize = 100;

/// The deepest payload, output or metadata the server stores.
pub const MAX_VALUE_DEPTH: usize = 64;

// The body limit stays below the parser's (127), and a stored value wrapped a few levels
// down in a body or a response still fits in it.
const _: () = assert!(MAX_BODY_DEPTH < 127 && MAX_VALUE_DEPTH + 8 <= MAX_BODY_DEPTH);

/// A value or a body nested deeper than its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("nested {depth} levels deep, more than the limit of {limit}")]
pub struct TooDeep {
    /// How deep the refused input nests.
    pub depth: usize,
    pub limit: usize,
}

/// Refuses `value` when it nests deeper than `limit`.
pub fn check_value(value: &Value, limit: usize) -> Result<(), TooDeep> {
    let depth = value_depth(value);
    if depth > limit {
        return Err(TooDeep { depth, limit });
    }
    Ok(())
}

/// Refuses JSON `text` when it nests deeper than `limit` (see [`text_depth`]).
pub fn check_text(text: &[u8], limit: usize) -> Result<(), TooDeep> {
    let depth = text_depth(text);
    if depth > limit {
        return Err(TooDeep { depth, limit });
    }
    Ok(())
}

/// How deep `value` nests, walked with an explicit stack.
pub fn value_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(value, 0usize)];
    while let Some((value, depth)) = pending.pop() {
        match value {
            Value::Array(items) => {
                deepest = deepest.max(depth + 1);
                pending.extend(items.iter().map(|child| (child, depth + 1)));
            }
            Value::Object(map) => {
                deepest = deepest.max(depth + 1);
                pending.extend(map.values().map(|child| (child, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// How deep JSON `text` nests, in one pass over its bytes: brackets outside strings
/// are counted. Meant for text that is about to be parsed (or was produced by
/// serializing): on text that is not JSON it returns a number that means nothing, and
/// the parser refuses that text anyway.
pub fn text_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn nested(depth: usize) -> String {
        "[".repeat(depth) + &"]".repeat(depth)
    }

    #[test]
    fn depths_count_containers() {
        let cases = [
            (json!(1), 0),
            (json!("[{"), 0),
            (json!({}), 1),
            (json!([]), 1),
            (json!({"a": [1]}), 2),
            (json!({"a": 1, "b": {"c": {"d": []}}, "e": [[]]}), 4),
            (json!([{"x": "]]]\"{{{"}, [[[]]]]), 4),
        ];
        for (value, depth) in cases {
            assert_eq!(value_depth(&value), depth, "{value}");
            assert_eq!(text_depth(value.to_string().as_bytes()), depth, "{value}");
        }
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        assert_eq!(text_depth(br#"{"a\"[": "\\", "b": [{}]}"#), 3);
    }

    #[test]
    fn the_body_limit_is_within_the_parsers() {
        assert!(serde_json::from_str::<Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(128)).is_err());
    }

    #[test]
    fn checks_refuse_past_the_limit_only() {
        let at_limit: Value = serde_json::from_str(&nested(MAX_VALUE_DEPTH)).unwrap();
        let deeper: Value = serde_json::from_str(&nested(MAX_VALUE_DEPTH + 1)).unwrap();
        assert_eq!(check_value(&at_limit, MAX_VALUE_DEPTH), Ok(()));
        assert_eq!(
            check_value(&deeper, MAX_VALUE_DEPTH),
            Err(TooDeep {
                depth: MAX_VALUE_DEPTH + 1,
                limit: MAX_VALUE_DEPTH
            })
        );
        assert_eq!(
            check_text(nested(1_000_000).as_bytes(), MAX_BODY_DEPTH)
                .unwrap_err()
                .to_string(),
            "nested 1000000 levels deep, more than the limit of 100"
        );
    }

    #[test]
    fn a_value_far_deeper_than_the_stack_allows_is_measured() {
        // Built by hand (the parser would refuse it) and taken apart by hand: dropping
        // it the ordinary way would recurse as deep as it nests.
        let mut value = json!(null);
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        assert_eq!(value_depth(&value), 100_000);
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or(Value::Null);
        }
    }

    /// Any JSON value, strings included that hold quotes, backslashes and brackets.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            r#"[\[\]{}"\\a]{0,6}"#.prop_map(Value::from),
        ];
        leaf.prop_recursive(10, 64, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(r#"[\[{"\\k]{0,3}"#, inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Measuring the text and measuring the parsed value agree.
        #[test]
        fn text_and_value_depths_agree(value in any_json()) {
            prop_assert_eq!(text_depth(value.to_string().as_bytes()), value_depth(&value));
        }
    }
}
