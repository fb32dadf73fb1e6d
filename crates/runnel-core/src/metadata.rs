//! Run metadata updates (contract §4.7): the operations of `PUT /api/v1/runs/{id}/metadata`
//! and how they change a metadata object.
//!
//! Pure logic: [`apply`] takes the current object and a list of [`Operation`]s and returns
//! the new object; the engine reads, applies and writes back conditionally, so two
//! concurrent updates never lose each other's changes.
//!
//! Keys are either a plain top-level key (`"progress"`, dots included as is) or a JSON
//! path starting with `$.` (`$.a.b`, `$.items[2]`). A segment named `__proto__`,
//! `constructor` or `prototype` is refused anywhere in a key, as upstream does. An
//! operation whose path runs into a value of the wrong kind (a key under a number, an
//! index past the end of an array) changes nothing, rather than failing the whole update.
//!
//! Depth is bounded before anything is built: a path of more than
//! [`MAX_VALUE_DEPTH`] segments is refused while it is read (it would create one object
//! per segment), and the result of an update may nest at most [`MAX_VALUE_DEPTH`] levels,
//! measured without recursion, so stored metadata always parses again (see
//! [`crate::nesting`]).

use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::nesting::{self, TooDeep, MAX_VALUE_DEPTH};
use crate::trigger::MAX_METADATA_BYTES;

/// How long after a run finished its metadata may still be updated (1 h).
pub const EDITABLE_AFTER_COMPLETION_MS: i64 = 3_600_000;

/// Key segments refused everywhere (prototype pollution upstream).
pub const FORBIDDEN_SEGMENTS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// One metadata operation, tagged by `type`. A `key` is a plain top-level key (dots
/// included as is) or a `$.` path (`$.a.b`, `$.items[2]`) of at most 64 segments
/// (`MAX_VALUE_DEPTH`); a segment `__proto__`, `constructor` or `prototype` is refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Operation {
    /// Replaces the whole metadata with `value` (as upstream's code does; its docs say
    /// "merge").
    Update {
        value: Map<String, Value>,
    },
    Set {
        key: String,
        value: Value,
    },
    Delete {
        key: String,
    },
    /// Pushes `value` onto the array at `key` (creating it; a non-array becomes the
    /// array's first item).
    Append {
        key: String,
        value: Value,
    },
    /// Removes every item equal to `value` from the array at `key`.
    Remove {
        key: String,
        value: Value,
    },
    /// Adds `value` to the number at `key` (a missing key or a non-number counts as 0).
    Increment {
        key: String,
        value: f64,
    },
}

/// `PUT /api/v1/runs/{id}/metadata` body. When `operations` is present (even empty) it is
/// applied to the stored metadata and `metadata` is ignored, as upstream does; otherwise
/// `metadata` replaces the whole object. `parentOperations` and `rootOperations` go to
/// the parent and root runs (to the run itself when it has none).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataUpdate {
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub operations: Option<Vec<Operation>>,
    #[serde(default)]
    pub parent_operations: Vec<Operation>,
    #[serde(default)]
    pub root_operations: Vec<Operation>,
}

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetadataError {
    #[error("Invalid metadata key: {0}")]
    ForbiddenKey(String),
    #[error("Invalid metadata key: {0}")]
    InvalidPath(String),
    /// A `$.` path with more segments than [`MAX_VALUE_DEPTH`] (the key is not echoed:
    /// it may be megabytes long).
    #[error("Invalid metadata key: a path of {segments} segments, more than the limit of {MAX_VALUE_DEPTH}")]
    PathTooDeep { segments: usize },
    /// The updated metadata would nest deeper than [`MAX_VALUE_DEPTH`].
    #[error("metadata: {0}")]
    TooDeep(TooDeep),
    /// The serialized result is over [`MAX_METADATA_BYTES`] (413, the contract's message).
    #[error("Metadata exceeds maximum size of {MAX_METADATA_BYTES} bytes")]
    TooLarge,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Parses a key into path segments.
fn path(key: &str) -> Result<Vec<Segment>, MetadataError> {
    let Some(rest) = key.strip_prefix("$.") else {
        if FORBIDDEN_SEGMENTS.contains(&key) {
            return Err(MetadataError::ForbiddenKey(key.to_owned()));
        }
        return Ok(vec![Segment::Key(key.to_owned())]);
    };
    let invalid = || MetadataError::InvalidPath(key.to_owned());
    // Every segment starts with a `.` or a `[`: counted before any is built.
    let segments = rest.bytes().filter(|b| matches!(b, b'.' | b'[')).count() + 1;
    if segments > MAX_VALUE_DEPTH {
        return Err(MetadataError::PathTooDeep { segments });
    }
    let mut segments = Vec::with_capacity(segments);
    for part in rest.split('.') {
        let (name, mut indexes) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        if name.is_empty() {
            return Err(invalid());
        }
        if FORBIDDEN_SEGMENTS.contains(&name) {
            return Err(MetadataError::ForbiddenKey(key.to_owned()));
        }
        segments.push(Segment::Key(name.to_owned()));
        while !indexes.is_empty() {
            let close = indexes.find(']').ok_or_else(invalid)?;
            let index: usize = indexes[1..close].parse().map_err(|_| invalid())?;
            segments.push(Segment::Index(index));
            indexes = &indexes[close + 1..];
            if !indexes.is_empty() && !indexes.starts_with('[') {
                return Err(invalid());
            }
        }
    }
    Ok(segments)
}

/// The container holding the last segment of `path`, creating missing objects on the way
/// when `create`.
fn parent_mut<'a>(root: &'a mut Value, path: &[Segment], create: bool) -> Option<&'a mut Value> {
    let mut node = root;
    for segment in &path[..path.len() - 1] {
        node = match (node, segment) {
            (Value::Object(map), Segment::Key(key)) => {
                if create {
                    map.entry(key.clone())
                        .or_insert_with(|| Value::Object(Map::new()))
                } else {
                    map.get_mut(key)?
                }
            }
            (Value::Array(items), Segment::Index(i)) => items.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// The value at the last segment inside `parent`, if any.
fn slot<'a>(parent: &'a mut Value, last: &Segment) -> Option<&'a mut Value> {
    match (parent, last) {
        (Value::Object(map), Segment::Key(key)) => map.get_mut(key),
        (Value::Array(items), Segment::Index(i)) => items.get_mut(*i),
        _ => None,
    }
}

/// Puts `value` at the last segment inside `parent` (an index may extend an array by one).
fn put(parent: &mut Value, last: &Segment, value: Value) {
    match (parent, last) {
        (Value::Object(map), Segment::Key(key)) => {
            map.insert(key.clone(), value);
        }
        (Value::Array(items), Segment::Index(i)) if *i < items.len() => items[*i] = value,
        (Value::Array(items), Segment::Index(i)) if *i == items.len() => items.push(value),
        _ => {}
    }
}

/// A number as JSON: whole results stay integers.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// Applies `operations` in order to `metadata`.
pub fn apply(
    metadata: Map<String, Value>,
    operations: &[Operation],
) -> Result<Map<String, Value>, MetadataError> {
    let mut root = Value::Object(metadata);
    for operation in operations {
        let (key, create) = match operation {
            Operation::Update { value } => {
                if let Some(bad) = value
                    .keys()
                    .find(|k| FORBIDDEN_SEGMENTS.contains(&k.as_str()))
                {
                    return Err(MetadataError::ForbiddenKey(bad.clone()));
                }
                root = Value::Object(value.clone());
                continue;
            }
            Operation::Set { key, .. }
            | Operation::Append { key, .. }
            | Operation::Increment { key, .. } => (key, true),
            Operation::Delete { key } | Operation::Remove { key, .. } => (key, false),
        };
        let path = path(key)?;
        let last = path.last().expect("a path has at least one segment");
        let Some(parent) = parent_mut(&mut root, &path, create) else {
            continue;
        };
        match operation {
            Operation::Update { .. } => unreachable!("handled above"),
            Operation::Set { value, .. } => put(parent, last, value.clone()),
            Operation::Delete { .. } => match (parent, last) {
                (Value::Object(map), Segment::Key(key)) => {
                    map.remove(key);
                }
                (Value::Array(items), Segment::Index(i)) if *i < items.len() => {
                    items.remove(*i);
                }
                _ => {}
            },
            Operation::Append { value, .. } => match slot(parent, last) {
                Some(Value::Array(items)) => items.push(value.clone()),
                Some(other) => {
                    let first = other.take();
                    *other = Value::Array(vec![first, value.clone()]);
                }
                None => put(parent, last, Value::Array(vec![value.clone()])),
            },
            Operation::Remove { value, .. } => {
                if let Some(Value::Array(items)) = slot(parent, last) {
                    items.retain(|item| item != value);
                }
            }
            Operation::Increment { value, .. } => match slot(parent, last) {
                Some(current) => {
                    let sum = current.as_f64().unwrap_or(0.0) + value;
                    *current = number(sum);
                }
                None => put(parent, last, number(*value)),
            },
        }
    }
    nesting::check_value(&root, MAX_VALUE_DEPTH).map_err(MetadataError::TooDeep)?;
    match root {
        Value::Object(map) => Ok(map),
        _ => unreachable!("the root stays an object"),
    }
}

/// Refuses top-level keys named like the forbidden segments in a whole replacement.
pub fn check_keys(metadata: &Map<String, Value>) -> Result<(), MetadataError> {
    match metadata
        .keys()
        .find(|k| FORBIDDEN_SEGMENTS.contains(&k.as_str()))
    {
        Some(bad) => Err(MetadataError::ForbiddenKey(bad.clone())),
        None => Ok(()),
    }
}

/// The metadata serialized for storage, within [`MAX_METADATA_BYTES`].
pub fn serialize(metadata: &Map<String, Value>) -> Result<String, MetadataError> {
    let text = serde_json::to_string(metadata).expect("a JSON map serializes");
    if text.len() > MAX_METADATA_BYTES {
        return Err(MetadataError::TooLarge);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn ops(value: Value) -> Vec<Operation> {
        serde_json::from_value(value).expect("operations parse")
    }

    #[test]
    fn operations_apply_in_order() {
        let cases = [
            (
                json!({"a": 1, "c": 5}),
                json!([{"type": "update", "value": {"b": 2, "a": 3}}]),
                json!({"a": 3, "b": 2}),
            ),
            (
                json!({}),
                json!([{"type": "set", "key": "progress", "value": 0.5}]),
                json!({"progress": 0.5}),
            ),
            (
                json!({}),
                json!([{"type": "set", "key": "a.b", "value": 1}]),
                json!({"a.b": 1}),
            ),
            (
                json!({}),
                json!([{"type": "set", "key": "$.a.b", "value": 1}]),
                json!({"a": {"b": 1}}),
            ),
            (
                json!({"a": {"b": 1, "c": 2}}),
                json!([{"type": "delete", "key": "$.a.b"}]),
                json!({"a": {"c": 2}}),
            ),
            (
                json!({"a": 1}),
                json!([{"type": "delete", "key": "missing"}]),
                json!({"a": 1}),
            ),
            (
                json!({}),
                json!([{"type": "append", "key": "logs", "value": "x"},
                       {"type": "append", "key": "logs", "value": "y"}]),
                json!({"logs": ["x", "y"]}),
            ),
            (
                json!({"logs": "x"}),
                json!([{"type": "append", "key": "logs", "value": "y"}]),
                json!({"logs": ["x", "y"]}),
            ),
            (
                json!({"logs": ["x", "y", "x", {"k": 1}]}),
                json!([{"type": "remove", "key": "logs", "value": "x"},
                       {"type": "remove", "key": "logs", "value": {"k": 1}}]),
                json!({"logs": ["y"]}),
            ),
            (
                json!({"n": 1}),
                json!([{"type": "increment", "key": "n", "value": 2},
                       {"type": "increment", "key": "m", "value": 1.5}]),
                json!({"n": 3, "m": 1.5}),
            ),
            (
                json!({"n": "text"}),
                json!([{"type": "increment", "key": "n", "value": 2}]),
                json!({"n": 2}),
            ),
            (
                json!({"items": [{"v": 1}, {"v": 2}]}),
                json!([{"type": "set", "key": "$.items[1].v", "value": 5},
                       {"type": "set", "key": "$.items[2]", "value": {"v": 3}}]),
                json!({"items": [{"v": 1}, {"v": 5}, {"v": 3}]}),
            ),
            (
                json!({"n": 4}),
                json!([{"type": "set", "key": "$.n.deeper", "value": 1}]),
                json!({"n": 4}),
            ),
        ];
        for (before, operations, after) in cases {
            let got = apply(object(before.clone()), &ops(operations.clone())).unwrap();
            assert_eq!(Value::Object(got), after, "{before} with {operations}");
        }
    }

    #[test]
    fn forbidden_segments_are_refused() {
        for key in [
            "__proto__",
            "constructor",
            "$.__proto__.polluted",
            "$.a.constructor",
            "$.a.prototype[0]",
        ] {
            let operations = ops(json!([{"type": "set", "key": key, "value": 1}]));
            assert_eq!(
                apply(Map::new(), &operations),
                Err(MetadataError::ForbiddenKey(key.to_owned())),
                "{key}"
            );
        }
        let update = ops(json!([{"type": "update", "value": {"__proto__": {"x": 1}}}]));
        assert!(apply(Map::new(), &update).is_err());
        assert!(check_keys(&object(json!({"prototype": 1}))).is_err());
        assert!(check_keys(&object(json!({"ok": 1}))).is_ok());
    }

    #[test]
    fn malformed_paths_are_refused() {
        for key in ["$.", "$.a..b", "$.a[x]", "$.a[1", "$.a[1]b"] {
            let operations = ops(json!([{"type": "delete", "key": key}]));
            assert_eq!(
                apply(Map::new(), &operations),
                Err(MetadataError::InvalidPath(key.to_owned())),
                "{key}"
            );
        }
    }

    /// `$.a.a…` with `segments` segments.
    fn deep_key(segments: usize) -> String {
        format!("${}", ".a".repeat(segments))
    }

    #[test]
    fn paths_deeper_than_the_limit_are_refused_before_anything_is_built() {
        for segments in [MAX_VALUE_DEPTH + 1, 7_000, 1_000_000] {
            let set = [Operation::Set {
                key: deep_key(segments),
                value: json!(1),
            }];
            assert_eq!(
                apply(Map::new(), &set),
                Err(MetadataError::PathTooDeep { segments })
            );
        }
        let indexes = format!("$.a{}", "[0]".repeat(MAX_VALUE_DEPTH));
        let set = [Operation::Set {
            key: indexes,
            value: json!(1),
        }];
        assert_eq!(
            apply(Map::new(), &set),
            Err(MetadataError::PathTooDeep {
                segments: MAX_VALUE_DEPTH + 1
            })
        );
    }

    #[test]
    fn results_may_nest_up_to_the_limit() {
        let at_limit = [Operation::Set {
            key: deep_key(MAX_VALUE_DEPTH),
            value: json!("leaf"),
        }];
        let stored = apply(Map::new(), &at_limit).unwrap();
        let text = serialize(&stored).unwrap();
        assert_eq!(nesting::text_depth(text.as_bytes()), MAX_VALUE_DEPTH);
        let one_deeper = [Operation::Set {
            key: deep_key(MAX_VALUE_DEPTH),
            value: json!({}),
        }];
        assert_eq!(
            apply(Map::new(), &one_deeper),
            Err(MetadataError::TooDeep(TooDeep {
                depth: MAX_VALUE_DEPTH + 1,
                limit: MAX_VALUE_DEPTH
            }))
        );
        // Appending wraps a scalar in an array: one more level, measured too.
        let append = [Operation::Append {
            key: deep_key(MAX_VALUE_DEPTH),
            value: json!(1),
        }];
        assert!(matches!(
            apply(stored, &append),
            Err(MetadataError::TooDeep(_))
        ));
    }

    #[test]
    fn unknown_operation_types_do_not_parse() {
        let parsed = serde_json::from_value::<Vec<Operation>>(json!([{"type": "merge"}]));
        assert!(parsed.is_err());
    }

    #[test]
    fn serialize_enforces_the_size_limit() {
        let small = object(json!({"a": "x"}));
        assert_eq!(serialize(&small).unwrap(), r#"{"a":"x"}"#);
        let big = object(json!({"a": "x".repeat(MAX_METADATA_BYTES)}));
        assert_eq!(serialize(&big), Err(MetadataError::TooLarge));
    }

    proptest! {
        /// A set followed by a delete of the same plain key leaves the other keys alone
        /// and the key gone.
        #[test]
        fn set_then_delete_restores_the_other_keys(
            key in "[a-z]{1,8}",
            others in proptest::collection::btree_map("[A-Z]{1,4}", any::<i32>(), 0..5),
            value in any::<i64>(),
        ) {
            let before: Map<String, Value> =
                others.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let set = apply(before.clone(), &[Operation::Set { key: key.clone(), value: json!(value) }]).unwrap();
            prop_assert_eq!(set.get(&key), Some(&json!(value)));
            let deleted = apply(set, &[Operation::Delete { key: key.clone() }]).unwrap();
            prop_assert_eq!(deleted, before);
        }

        /// Increments add up regardless of how they are split.
        #[test]
        fn increments_sum(steps in proptest::collection::vec(-1000i32..1000, 0..20)) {
            let operations: Vec<Operation> = steps
                .iter()
                .map(|s| Operation::Increment { key: "n".to_owned(), value: f64::from(*s) })
                .collect();
            let got = apply(Map::new(), &operations).unwrap();
            let want: i64 = steps.iter().map(|s| i64::from(*s)).sum();
            if steps.is_empty() {
                prop_assert_eq!(got.get("n"), None);
            } else {
                prop_assert_eq!(got.get("n"), Some(&json!(want)));
            }
        }
    }
}
