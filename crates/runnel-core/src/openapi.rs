//! Schemas for the OpenAPI document that `#[derive(ToSchema)]` cannot write: fields the
//! server reads as one of several JSON types (`tags` is a string or an array of them),
//! kept next to the validators whose bounds they state so the two change together.
//!
//! Only built with the `openapi` feature (the server's); nothing here validates.

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use crate::trigger::MAX_TAG_LEN;

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
