//! Score: lists, limits and rules over the request's signals → a score in [0, 1], the
//! hard floor lists and limits put under the decision, and the reasons.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::config::{Combine, ListAction, ListKind, ModelMode};
use crate::decide::{Decision, ResponseKind};
use crate::extract::Identities;
use crate::features::Features;
use crate::model::Model;
use crate::runtime::{ModelSlot, Route, Runtime};
use crate::signals::Signals;
use crate::state::LimitOutcome;

/// One list, limit or rule that fired, by index into the runtime; for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    List(usize),
    /// Index into the route's limits.
    Limit {
        index: usize,
        shadow: bool,
    },
    Rule {
        index: usize,
        shadow: bool,
    },
}

/// A reason code. Made once per config (or model) and shared by the requests that
/// carry it: a stopped request carries a dozen, and copying none of them is cheaper.
pub type Reason = Arc<str>;

#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub value: f64,
    /// The least decision lists and limits demand, whatever the score.
    pub floor: Decision,
    /// The answer the floor asks for when it stops the request.
    pub floor_response: Option<ResponseKind>,
    /// An allow-list match: nothing else applies.
    pub allowlisted: bool,
    pub retry_after_ms: Option<u64>,
    /// Reason codes, in config order: lists, limits, rules; `shadow:` marks what was
    /// only watched.
    pub reasons: Vec<Reason>,
    pub hits: SmallVec<[Hit; 8]>,
    /// The model's calibrated score, when a model scored the request (enforced or
    /// shadowed: `Route::model` says which).
    pub model: Option<f64>,
}

impl Score {
    /// One more reason. The first makes room for the usual few at once, where growing
    /// from empty reallocates twice; a request with no reason allocates nothing.
    fn add_reason(&mut self, reason: Reason) {
        if self.reasons.capacity() == 0 {
            self.reasons.reserve(8);
        }
        self.reasons.push(reason);
    }

    /// Nothing known against the request: score 0, no floor, no reasons.
    pub fn neutral() -> Score {
        Score {
            value: 0.0,
            floor: Decision::Allow,
            floor_response: None,
            allowlisted: false,
            retry_after_ms: None,
            reasons: Vec::new(),
            hits: SmallVec::new(),
            model: None,
        }
    }
}

/// Scores a request on `route` from its identities and signals.
pub fn evaluate(rt: &Runtime, route: &Route, ids: &Identities, signals: &Signals) -> Score {
    let mut score = Score::neutral();
    for (i, list) in rt.lists.iter().enumerate() {
        let hit = match list.kind {
            ListKind::User => ids.user.as_ref().is_some_and(|v| list.values.contains(v)),
            ListKind::Device => ids.device.as_ref().is_some_and(|v| list.values.contains(v)),
            ListKind::Phone => ids.phone.as_ref().is_some_and(|v| list.values.contains(v)),
            ListKind::Ip => list.contains_ip(ids.ip),
        };
        if !hit {
            continue;
        }
        score.hits.push(Hit::List(i));
        match list.action {
            ListAction::Allow => {
                score.add_reason(list.reason.clone());
                score.allowlisted = true;
                score.floor = Decision::Allow;
                score.floor_response = None;
                return score;
            }
            ListAction::Block => {
                score.add_reason(list.reason.clone());
                score.value = 1.0;
                score.floor = Decision::Block;
                score.floor_response = Some(ResponseKind::Block);
            }
        }
    }
    for (i, (limit, outcome)) in route.limits.iter().zip(&signals.limits).enumerate() {
        let Some(LimitOutcome::Exceeded { retry_after_ms }) = outcome else {
            continue;
        };
        score.hits.push(Hit::Limit {
            index: i,
            shadow: limit.shadow,
        });
        score.add_reason(limit.reason.clone());
        if limit.shadow {
            continue;
        }
        score.retry_after_ms = Some(score.retry_after_ms.unwrap_or(0).max(*retry_after_ms));
        if limit.decision > score.floor {
            score.floor = limit.decision;
            score.floor_response = Some(match limit.decision {
                Decision::Block => ResponseKind::RateLimit,
                _ => ResponseKind::Challenge,
            });
        }
    }
    // Rules combine as independent evidence (noisy-OR): each matching rule removes its
    // share of the remaining doubt, so the score stays in [0, 1] however many match.
    let mut doubt = 1.0 - score.value;
    let values = signals.features.as_slice();
    for &index in &route.rules {
        let rule = &rt.rules[index];
        if !rule.expr.matches(values) {
            continue;
        }
        score.hits.push(Hit::Rule {
            index,
            shadow: rule.shadow,
        });
        score.add_reason(rule.reason.clone());
        if !rule.shadow {
            doubt *= 1.0 - rule.score;
        }
    }
    score.value = (1.0 - doubt).clamp(0.0, 1.0);
    if let (Some(slot), true) = (&rt.model, route.model != ModelMode::Off) {
        if let Some(model) = &slot.loaded {
            apply_model(
                &mut score,
                slot,
                model,
                route.model == ModelMode::Shadow,
                &signals.features,
            );
        }
    }
    score
}

/// The classifier's part: its calibrated score joins the rules' (unless shadowed), and
/// when it is high enough its top contributing features become `model:FEATURE` reasons
/// (`shadow:model:FEATURE` in shadow), so staff can see why a request was stopped.
/// Only a request that gets reasons pays for the explanation (`Model::score_explained`:
/// for a forest, adding up the path tables of the leaves the score's walk reached).
fn apply_model(score: &mut Score, slot: &ModelSlot, model: &Model, shadow: bool, features: &Features) {
    // Reasons only where the model counts (or would, in shadow).
    let explain_from = slot.reason_threshold.max(slot.min_score);
    let (p, top) = model.score_explained(features, slot.top_features, |p| p >= explain_from);
    score.model = Some(p);
    if !shadow && p >= slot.min_score {
        let m = (slot.weight * p).clamp(0.0, 1.0);
        score.value = match slot.combine {
            Combine::NoisyOr => 1.0 - (1.0 - score.value) * (1.0 - m),
            Combine::Max => score.value.max(m),
        }
        .clamp(0.0, 1.0);
    }
    let Some(top) = top else { return };
    let prefix = if shadow { "shadow:model" } else { "model" };
    if top.is_empty() {
        score.add_reason(prefix.into());
    }
    let names = model_reasons(shadow);
    for (f, _) in top {
        score.add_reason(names[f as usize].clone());
    }
}

/// `model:FEATURE` (`shadow:model:FEATURE`) for every feature, formatted once.
fn model_reasons(shadow: bool) -> &'static [Reason] {
    static REASONS: std::sync::OnceLock<[Vec<Reason>; 2]> = std::sync::OnceLock::new();
    let table = REASONS.get_or_init(|| {
        ["model", "shadow:model"].map(|prefix| {
            crate::features::ALL
                .iter()
                .map(|f| format!("{prefix}:{}", f.name()).into())
                .collect()
        })
    });
    &table[usize::from(shadow)]
}
