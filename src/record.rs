//! The decision record of DESIGN.md: one per scored request, in the audit log and in
//! replay output.

use serde::Serialize;

use crate::decide::Decision;
use crate::event::{Event, Label};
use crate::extract::Identities;
use crate::score::Reason;

#[derive(Debug, Clone, Serialize)]
pub struct DecisionRecord<'a> {
    pub ts_ms: u64,
    pub request_id: &'a str,
    pub route: &'a str,
    pub action: &'static str,
    pub decision: Decision,
    /// Rounded to three decimals, as in the `x-risk-score` header.
    pub score: f64,
    pub reasons: &'a [Reason],
    pub identities: &'a Identities,
    pub mode: &'static str,
    /// The classifier's calibrated score (three decimals), when a model scored the
    /// request, enforced or in shadow; the score above already includes it when enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'a Label>,
    /// The whole event, when the audit log captures traffic for later replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a Event>,
}

/// The score as the contract prints it: three decimals.
pub fn round_score(score: f64) -> f64 {
    (score * 1_000.0).round() / 1_000.0
}
