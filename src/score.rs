//! Score: lists, limits and rules over the request's signals → a score in [0, 1], the
//! hard floor lists and limits put under the decision, and the reasons.

use smallvec::SmallVec;

use crate::config::{ListAction, ListKind};
use crate::decide::{Decision, ResponseKind};
use crate::extract::Identities;
use crate::runtime::{Route, Runtime};
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
    pub reasons: Vec<String>,
    pub hits: SmallVec<[Hit; 8]>,
}

impl Score {
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
                score.reasons.push(format!("allowlist:{}", list.name));
                score.allowlisted = true;
                score.floor = Decision::Allow;
                score.floor_response = None;
                return score;
            }
            ListAction::Block => {
                score.reasons.push(format!("blocklist:{}", list.name));
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
        if limit.shadow {
            score.reasons.push(format!("shadow:limit:{}", limit.name));
            continue;
        }
        score.reasons.push(format!("limit:{}", limit.name));
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
        if rule.shadow {
            score.reasons.push(format!("shadow:{}", rule.name));
        } else {
            score.reasons.push(rule.name.clone());
            doubt *= 1.0 - rule.score;
        }
    }
    score.value = (1.0 - doubt).clamp(0.0, 1.0);
    score
}
