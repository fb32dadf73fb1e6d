//! Schemas for the OpenAPI document that `#[derive(ToSchema)]` cannot write: fields the
//! server reads as one of several JSON types (`tags` is a string or an array of them),
//! kept next to the validators whose bounds they state so the two change together.
//!
//! Only built with the `openapi` feature (the server's); nothing here validates.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use crate::duration::MAX_DURATION_STRING_LEN;
use crate::tags::MAX_TAG_LEN;

/// Text without U+0000, which no backend stores.
pub const NO_NUL: &str = "^[^\\u0000]*$";

/// One tag: at most [`MAX_TAG_LEN`] characters, no NUL (a blank one is dropped).
fn tag() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(MAX_TAG_LEN))
        .pattern(Some(NO_NUL))
}

/// `tags`: one tag or an array of them (duplicates and blanks are dropped before the
/// 10-tag limit is counted, so the array's length is not bounded here).
pub fn tags() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(tag())
        .item(ArrayBuilder::new().items(tag()))
        .description(Some(
            "A tag or an array of tags, each at most 128 characters without NUL; blanks and duplicates are dropped; more than 10 on the run answers 422.",
        ))
        .into()
}

/// `null`, for the fields that accept it besides their own types.
fn null() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Null)
}

/// `options.tags` of a trigger: [`tags`], or `null`.
pub fn tags_or_null() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(tag())
        .item(ArrayBuilder::new().items(tag()))
        .item(null())
        .description(Some(
            "A tag or an array of tags, each at most 128 characters without NUL; blanks and duplicates are dropped; more than 10 answers 422.",
        ))
        .into()
}

/// `options.concurrencyKey`: a string (no NUL; empty means none) or a number.
pub fn concurrency_key() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_NUL)),
        )
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(null())
        .into()
}

/// A duration (`parse_duration_secs`) or an RFC 3339 date as chrono reads it (`T`, `t`
/// or a space between date and time; `Z`, `z` or an offset, whose sign may be U+2212):
/// the strings `delay` takes.
pub const DELAY_PATTERN: &str = "^([0-9]+(w|d|hr|h|m|s))+$|^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]*)?([Zz]|[+\\u2212-][0-9]{2}:?[0-9]{2})$";

/// `options.delay`: a duration string, a date, or a Unix time in milliseconds within
/// the dates the server can represent (a time already past queues at once).
pub fn delay() -> RefOr<Schema> {
    use chrono::{DateTime, Utc};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(DELAY_PATTERN))
                .description(Some(
                    "A duration like `30s` or `1h30m` (at most 100 characters), or an RFC 3339 date",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(DateTime::<Utc>::MIN_UTC.timestamp_millis() as f64))
                .maximum(Some(DateTime::<Utc>::MAX_UTC.timestamp_millis() as f64))
                .description(Some("A Unix time in milliseconds")),
        )
        .item(null())
        .into()
}

/// `options.ttl`: a duration string, or whole seconds; 0 means none.
pub fn ttl() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_DURATION_STRING_LEN))
                .pattern(Some("^([0-9]+(w|d|hr|h|m|s))+$")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u64::MAX)),
        )
        .item(null())
        .into()
}

/// `options.metadata`: an object, or its serialized text (`metadataType` says which
/// format; for `application/json`, text of an object).
pub fn trigger_metadata() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Object))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(NO_NUL)),
        )
        .item(null())
        .description(Some(
            "An object or its serialized text, nested at most 64 levels and at most 262144 bytes serialized (else 413).",
        ))
        .into()
}

/// `delay` of a reschedule: a duration or a date, which must end in the future.
pub fn delay_string() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(DELAY_PATTERN))
        .description(Some(
            "A duration like `30s` or `1h30m` (at most 100 characters) from now, or an RFC 3339 date in the future",
        ))
        .into()
}

/// `expirationTime` of a minted token: a Unix time in seconds (after now, at most 30
/// days ahead: bounds that move with the clock, so stated only in words) or a duration.
pub fn expiration_time() -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .description(Some(
                    "A Unix time in seconds, in the future and at most 30 days ahead",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_DURATION_STRING_LEN))
                .pattern(Some("^([0-9]+(w|d|hr|h|m|s))+$"))
                .description(Some("A duration from now, at most 30 days")),
        )
        .item(null())
        .into()
}
