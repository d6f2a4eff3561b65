//! SCRATCH (not committed): API stand-ins until the detectors land.
use serde::{Deserialize, Serialize};
use crate::config::{DeclaredFeature, LabelConfig, OutlierConfig, UnknownFeatures};
use crate::learn::{FeatureVec, RawFeatures, Scored, TaskKind};

#[derive(Debug, Clone)]
pub struct Schema;
impl Schema {
    pub fn new(_f: &[DeclaredFeature], _u: UnknownFeatures) -> Self { Schema }
    pub fn check(&self, _raw: &RawFeatures<'_>) -> Result<(), String> { Ok(()) }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutlierDetector;
pub struct Outlier;
impl std::fmt::Display for Outlier { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "o") } }
impl OutlierDetector {
    pub fn new(_c: &OutlierConfig) -> Self { OutlierDetector }
    pub fn judge(&self, _x: &FeatureVec) -> Option<Outlier> { None }
    pub fn learn(&mut self, _x: &FeatureVec) {}
    pub fn tracked(&self) -> usize { 0 }
}
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabelSanity;
pub enum LabelChange { Flagged { recent_rate: f64, normal_rate: f64, others_rate: f64 }, Cleared }
pub struct LabelVerdict { pub flagged: bool, pub change: Option<LabelChange> }
pub struct SourceLabels { pub source: String, pub flagged: bool, pub recent_rate: Option<f64>, pub normal_rate: Option<f64> }
impl LabelSanity {
    pub fn new(_c: &LabelConfig, _m: usize) -> Self { LabelSanity }
    pub fn observe(&mut self, _s: Option<&str>, _sc: &Scored, _t: TaskKind) -> LabelVerdict { LabelVerdict { flagged: false, change: None } }
    pub fn is_flagged(&self, _s: Option<&str>) -> bool { false }
    pub fn report(&self) -> Vec<SourceLabels> { Vec::new() }
}
