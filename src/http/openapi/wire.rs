//! Schemas of the wire types whose JSON is read or written by hand
//! (features, labels, probabilities) and of the request bodies, whose
//! structs take every field as optional so that a refusal can say what is
//! missing: the document states the shapes a request really has (one
//! instance or a batch; an example by features or by `prediction_id`).
//!
//! What a schema cannot say, because it depends on the model's
//! configuration, is left to the 422 the server answers: which labels a
//! model's classes allow, `features.max_per_example`,
//! `server.max_batch_instances`.

use std::borrow::Cow;

use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::http::feedback::{ExampleIn, FeedbackRequest};
use crate::http::predict::{Instance, PredictRequest, Probabilities};
use crate::http::source::MAX_SOURCE_LEN;
use crate::learn::{LabelOut, RawFeatures, RawLabel};

/// Largest feature value accepted (`FeatureError::TooLarge`).
const MAX_FEATURE: f64 = 1e30;

/// A `$ref` to `T`'s component.
pub(super) fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// Adds `T` and what it references to the components.
fn collect<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// An object with exactly these properties (`required` among them).
fn closed(properties: Vec<(&str, RefOr<Schema>)>, required: &[&str]) -> ObjectBuilder {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    for (name, schema) in properties {
        object = object.property(name, schema);
    }
    for name in required {
        object = object.required(*name);
    }
    object
}

fn feature_number() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(-MAX_FEATURE))
        .maximum(Some(MAX_FEATURE))
        .into()
}

impl PartialSchema for RawFeatures<'_> {
    fn schema() -> RefOr<Schema> {
        let value = OneOfBuilder::new()
            .item(feature_number())
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Boolean));
        OneOfBuilder::new()
            .description(Some(
                "An object of feature name to value (a number within ±1e30; a string, hashed with its name as a categorical; or a boolean), or an array of numbers named \"0\", \"1\", ... At most features.max_per_example of them.",
            ))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
                        value.into(),
                    ))))
                    .min_properties(Some(1)),
            )
            .item(
                ArrayBuilder::new()
                    .items(RefOr::T(feature_number()))
                    .min_items(Some(1)),
            )
            .into()
    }
}

impl ToSchema for RawFeatures<'_> {
    fn name() -> Cow<'static, str> {
        "Features".into()
    }
}

impl PartialSchema for RawLabel<'_> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([
                Type::Boolean,
                Type::Integer,
                Type::Number,
                Type::String,
            ]))
            .description(Some(
                "Binary: 0/1, false/true or one of the model's two class names; multiclass: a class name; regression: a finite number",
            ))
            .into()
    }
}

impl ToSchema for RawLabel<'_> {
    fn name() -> Cow<'static, str> {
        "Label".into()
    }
}

/// A feedback source's name (`http::source`).
pub struct Source;

impl PartialSchema for Source {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_SOURCE_LEN))
            .pattern(Some(
                "^[^\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069]+$",
            ))
            .description(Some(
                "Who sent the example: 1 to 128 bytes of UTF-8, without control, line-separator or bidirectional-override characters. With `[[sources]]` it must be the token's own name.",
            ))
            .into()
    }
}

impl ToSchema for Source {}

impl PartialSchema for LabelOut<'_> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Integer, Type::String]))
            .description(Some(
                "The predicted class: 0 or 1 for a binary model without class names, else the class name",
            ))
            .into()
    }
}

impl ToSchema for LabelOut<'_> {
    fn name() -> Cow<'static, str> {
        "PredictedLabel".into()
    }
}

impl PartialSchema for Probabilities<'_> {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Class name to probability, in class order"))
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0.0))
                    .maximum(Some(1.0))
                    .into(),
            ))))
            .into()
    }
}

impl ToSchema for Probabilities<'_> {
    fn name() -> Cow<'static, str> {
        "Probabilities".into()
    }
}

impl PartialSchema for Instance<'_> {
    fn schema() -> RefOr<Schema> {
        closed(
            vec![("features", reference::<RawFeatures>())],
            &["features"],
        )
        .description(Some("One instance of a batch"))
        .into()
    }
}

impl ToSchema for Instance<'_> {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        collect::<RawFeatures>(schemas);
    }
}

impl PartialSchema for PredictRequest<'_> {
    fn schema() -> RefOr<Schema> {
        let batch = ArrayBuilder::new()
            .items(reference::<Instance>())
            .min_items(Some(1))
            .description(Some("At most server.max_batch_instances"));
        OneOfBuilder::new()
            .description(Some(
                "One instance (`features`) or a batch (`instances`), not both",
            ))
            .item(closed(
                vec![("features", reference::<RawFeatures>())],
                &["features"],
            ))
            .item(closed(
                vec![("instances", RefOr::T(batch.into()))],
                &["instances"],
            ))
            .into()
    }
}

impl ToSchema for PredictRequest<'_> {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        collect::<RawFeatures>(schemas);
        collect::<Instance>(schemas);
    }
}

/// An example by its features, or by the `prediction_id` of an earlier
/// prediction (whose features the server kept).
fn example() -> OneOfBuilder {
    let id = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("The `prediction_id` of an earlier prediction"));
    OneOfBuilder::new()
        .item(closed(
            vec![
                ("features", reference::<RawFeatures>()),
                ("label", reference::<RawLabel>()),
                ("source", reference::<Source>()),
            ],
            &["features", "label"],
        ))
        .item(closed(
            vec![
                ("prediction_id", RefOr::T(id.into())),
                ("label", reference::<RawLabel>()),
                ("source", reference::<Source>()),
            ],
            &["prediction_id", "label"],
        ))
}

impl PartialSchema for ExampleIn<'_> {
    fn schema() -> RefOr<Schema> {
        example()
            .description(Some(
                "A labelled example: by `features`, or by the `prediction_id` of an earlier prediction",
            ))
            .into()
    }
}

impl ToSchema for ExampleIn<'_> {
    fn name() -> Cow<'static, str> {
        "Example".into()
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        collect::<RawFeatures>(schemas);
        collect::<RawLabel>(schemas);
        collect::<Source>(schemas);
    }
}

impl PartialSchema for FeedbackRequest<'_> {
    fn schema() -> RefOr<Schema> {
        let examples = ArrayBuilder::new()
            .items(reference::<ExampleIn>())
            .min_items(Some(1));
        example()
            .description(Some(
                "One example, or a batch (`examples`, with an optional `source` for those that name none)",
            ))
            .item(closed(
                vec![
                    ("examples", RefOr::T(examples.into())),
                    ("source", reference::<Source>()),
                ],
                &["examples"],
            ))
            .into()
    }
}

impl ToSchema for FeedbackRequest<'_> {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        collect::<ExampleIn>(schemas);
        ExampleIn::schemas(schemas);
    }
}
