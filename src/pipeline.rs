//! The whole request path in one function, shared by serve, replay, train and the demo:
//! route → extract → signals → score → decide.

use crate::config::{Mode, OnStateError};
use crate::decide::{self, Decision, ResponseKind};
use crate::event::{Event, Label};
use crate::extract::{self, Identities, RequestView};
use crate::features::Features;
use crate::record::{round_score, DecisionRecord};
use crate::runtime::Runtime;
use crate::score::{self, Score};
use crate::signals;
use crate::state::{KeyHasher, StateStore};

/// What the pipeline concluded about one routed request.
#[derive(Debug, Clone)]
pub struct Assessment {
    /// Index into `Runtime::routes`.
    pub route: usize,
    pub identities: Identities,
    pub score: Score,
    pub decision: Decision,
    pub mode: Mode,
    /// Set when the gateway must answer the client itself (enforced challenge or block).
    pub respond: Option<ResponseKind>,
    /// The state backend failed or was too slow; `degraded` says what was done instead.
    pub state_error: bool,
    /// The degradation policy applied, when the state backend failed.
    pub degraded: Option<OnStateError>,
    /// The feature vector the score was computed from (absent when the state failed).
    pub features: Option<Features>,
}

/// Assesses one event. `None` when no route matches (the request is not scored).
pub async fn assess<S: StateStore>(rt: &Runtime, state: &S, hasher: &KeyHasher, event: &Event) -> Option<Assessment> {
    let method = http::Method::from_bytes(event.method.as_bytes()).ok()?;
    let route_index = rt.route(&method, &event.path)?;
    Some(assess_route(rt, route_index, state, hasher, event, event.ts_ms).await)
}

/// Assesses one request at `ts` (ms since the epoch) on a route already found (the
/// proxy routes before it reads the body, and reads the live request, not an event).
pub async fn assess_route<S: StateStore>(
    rt: &Runtime,
    route_index: usize,
    state: &S,
    hasher: &KeyHasher,
    request: &impl RequestView,
    ts: u64,
) -> Assessment {
    let route = &rt.routes[route_index];
    let identities = extract::identities(&route.identity, request, &rt.server.trusted_proxies);
    // A state outage or a slow backend: the route's degradation policy decides, counted.
    let (signals, degraded) = match signals::observe(state, hasher, route, &rt.signals, &identities, ts).await {
        Ok(s) => (Some(s), None),
        Err(_) => match (route.on_state_error, state.local()) {
            (OnStateError::Local, Some(local)) => {
                let local = signals::observe(local, hasher, route, &rt.signals, &identities, ts).await;
                (local.ok(), Some(OnStateError::Local))
            }
            (OnStateError::Deny, _) => (None, Some(OnStateError::Deny)),
            _ => (None, Some(OnStateError::Allow)),
        },
    };
    let state_error = degraded.is_some();
    let mut score = match (&signals, route.scored) {
        (Some(signals), true) => score::evaluate(rt, route, &identities, signals),
        _ => Score::neutral(),
    };
    match degraded {
        Some(OnStateError::Local) => score.reasons.push("state_local".into()),
        Some(OnStateError::Deny) => {
            score.reasons.push("state_unavailable".into());
            score.floor = Decision::Block;
            score.floor_response = Some(ResponseKind::Block);
        }
        Some(_) => score.reasons.push("state_unavailable".into()),
        None => {}
    }
    let decision = if score.allowlisted {
        Decision::Allow
    } else {
        decide::decide(&route.policy, score.value, score.floor)
    };
    let respond = (route.mode == Mode::Enforce && decision.stops()).then(|| match score.floor_response {
        Some(kind) if score.floor == decision => kind,
        _ if decision == Decision::Block => ResponseKind::Block,
        _ => ResponseKind::Challenge,
    });
    let features = signals.map(|s| s.features);
    Assessment {
        route: route_index,
        identities,
        score,
        decision,
        mode: route.mode,
        respond,
        state_error,
        degraded,
        features,
    }
}

impl Assessment {
    /// The decision record for this assessment of the request made at `ts_ms`, with
    /// the event's ground truth when replayed (`label`) and the whole event when the
    /// audit log captures traffic (`event`).
    pub fn record<'a>(
        &'a self,
        rt: &'a Runtime,
        ts_ms: u64,
        request_id: &'a str,
        label: Option<&'a Label>,
        event: Option<&'a Event>,
    ) -> DecisionRecord<'a> {
        let route = &rt.routes[self.route];
        DecisionRecord {
            ts_ms,
            request_id,
            route: &route.name,
            action: route.action.as_str(),
            decision: self.decision,
            score: round_score(self.score.value),
            reasons: &self.score.reasons,
            identities: &self.identities,
            mode: self.mode.as_str(),
            model_score: self.score.model.map(round_score),
            label,
            event,
        }
    }
}
