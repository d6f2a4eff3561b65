//! `POST /v1/models/{model}/predict`: one instance (`{"features": ...}`) or
//! a batch (`{"instances": [{"features": ...}, ...]}`), answered by the
//! live version, which is read once per request so a batch shares one
//! version. Every prediction gets a `prediction_id` remembered in the
//! model's join cache for delayed labels.

use std::time::SystemTime;

use axum::extract::State;
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::learn::{FeatureVec, LabelOut, LabelSpace, Output, RawFeatures};
use crate::serving::PendingPrediction;

use super::AppState;
use super::body::{JsonBody, json_response, parse};
use super::error::ApiError;
use super::model_name::ModelName;
use super::openapi::ErrorResponse;

/// One instance (`features`) or a batch (`instances`), not both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest<'a> {
    #[serde(borrow, default)]
    features: Option<RawFeatures<'a>>,
    #[serde(borrow, default)]
    instances: Option<Vec<Instance<'a>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance<'a> {
    #[serde(borrow)]
    features: RawFeatures<'a>,
}

/// One prediction as it is written in a response. `model` and
/// `model_version` are on a single instance's answer (a batch has them
/// once); classifiers answer `label` and `probabilities`, regression
/// `value`.
#[derive(Serialize, ToSchema)]
pub struct PredictionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    model_version: Option<u64>,
    /// Send it back with the label as feedback (`prediction_id`).
    prediction_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    label: Option<LabelOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    probabilities: Option<Probabilities<'a>>,
}

/// Class name -> probability, in class order.
pub struct Probabilities<'a> {
    space: &'a LabelSpace,
    p: Vec<f32>,
}

impl Serialize for Probabilities<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.p.len()))?;
        for (k, p) in self.p.iter().enumerate() {
            map.serialize_entry(self.space.class_key(k), p)?;
        }
        map.end()
    }
}

/// A batch's predictions, in the order of its instances, from one version.
#[derive(Serialize, ToSchema)]
pub struct BatchOut<'a> {
    model: &'a str,
    model_version: u64,
    predictions: Vec<PredictionOut<'a>>,
}

/// The answer to one instance or to a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictAnswer<'a> {
    One(PredictionOut<'a>),
    Batch(BatchOut<'a>),
}

/// Predicts with the live version.
#[utoipa::path(
    post,
    path = "/v1/models/{model}/predict",
    tag = "predict",
    params(("model" = String, Path, description = "The model's name")),
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The prediction(s)", body = PredictAnswer),
        (status = 404, description = "`model_not_found`", body = ErrorResponse),
        (status = 422, description = "`invalid_request`, `invalid_features`, `too_many_features`, `invalid_batch` or `batch_too_large`", body = ErrorResponse),
    ),
)]
pub async fn predict(
    State(state): State<AppState>,
    ModelName(model): ModelName,
    JsonBody(body): JsonBody,
) -> Result<axum::response::Response, ApiError> {
    let runtime = state.model(&model)?;
    let request: PredictRequest = parse(&body)?;
    let hasher = runtime.hasher;
    match (request.features, request.instances) {
        (Some(features), None) => {
            let x = hasher.hash(&features)?;
            let (version, out) = {
                let live = runtime.store.guard();
                (live.version, live.params.predict(&x))
            };
            let space = &*runtime.space;
            let schema = runtime.schema_violation(&features);
            let id = remember(&runtime.joins, x, version, schema);
            let mut one = render(space, out, id);
            one.model = Some(&runtime.name);
            one.model_version = Some(version);
            if let Some(i) = state.metrics.model(&runtime.name) {
                i.predictions.inc();
            }
            json_response(&PredictAnswer::One(one))
        }
        (None, Some(instances)) => {
            if instances.is_empty() {
                return Err(ApiError::InvalidRequest("instances is empty".into()));
            }
            if instances.len() > state.max_batch_instances {
                return Err(ApiError::TooManyInstances(state.max_batch_instances));
            }
            let mut xs = Vec::with_capacity(instances.len());
            let mut errors = Vec::new();
            for (i, inst) in instances.iter().enumerate() {
                match hasher.hash(&inst.features) {
                    Ok(x) => xs.push((x, runtime.schema_violation(&inst.features))),
                    Err(e) => errors.push(ApiError::from(e).item(i)),
                }
            }
            if !errors.is_empty() {
                return Err(ApiError::InvalidBatch(errors));
            }
            // One version for the whole batch: load once.
            let live = runtime.store.live();
            let outs: Vec<Output> = xs.iter().map(|(x, _)| live.params.predict(x)).collect();
            let version = live.version;
            drop(live);
            let space = &*runtime.space;
            let predictions = xs
                .into_iter()
                .zip(outs)
                .map(|((x, schema), out)| {
                    render(space, out, remember(&runtime.joins, x, version, schema))
                })
                .collect();
            let out = BatchOut {
                model: &runtime.name,
                model_version: version,
                predictions,
            };
            if let Some(i) = state.metrics.model(&runtime.name) {
                i.predictions.inc_by(out.predictions.len() as u64);
            }
            json_response(&PredictAnswer::Batch(out))
        }
        (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
            "send either `features` or `instances`, not both".into(),
        )),
        (None, None) => Err(ApiError::InvalidRequest(
            "missing `features` (one instance) or `instances` (a batch)".into(),
        )),
    }
}

fn remember(
    joins: &crate::serving::JoinCache,
    features: FeatureVec,
    version: u64,
    schema: Option<std::sync::Arc<str>>,
) -> String {
    joins.insert(PendingPrediction {
        features,
        version,
        predicted_at: SystemTime::now(),
        schema,
    })
}

fn render(space: &LabelSpace, out: Output, prediction_id: String) -> PredictionOut<'_> {
    let label = out.argmax().map(|k| space.label_out(k));
    let (value, probabilities) = match out {
        Output::Probabilities(p) => (None, Some(Probabilities { space, p })),
        Output::Value(v) => (Some(v), None),
    };
    PredictionOut {
        model: None,
        model_version: None,
        prediction_id,
        label,
        value,
        probabilities,
    }
}
