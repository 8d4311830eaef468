//! The whole request path in one function, shared by serve, replay, train and the demo:
//! route → extract → signals → score → decide.

use crate::config::Mode;
use crate::decide::{self, Decision, ResponseKind};
use crate::event::Event;
use crate::extract::{self, Identities};
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
    /// The state backend failed; the request was decided without signals.
    pub state_error: bool,
    /// The feature vector the score was computed from (absent when the state failed).
    pub features: Option<Features>,
}

/// Assesses one event. `None` when no route matches (the request is not scored).
pub async fn assess<S: StateStore>(rt: &Runtime, state: &S, hasher: &KeyHasher, event: &Event) -> Option<Assessment> {
    let method = http::Method::from_bytes(event.method.as_bytes()).ok()?;
    let route_index = rt.route(&method, &event.path)?;
    Some(assess_route(rt, route_index, state, hasher, event).await)
}

/// Assesses one event on a route already found (the proxy routes before it reads the body).
pub async fn assess_route<S: StateStore>(
    rt: &Runtime,
    route_index: usize,
    state: &S,
    hasher: &KeyHasher,
    event: &Event,
) -> Assessment {
    let route = &rt.routes[route_index];
    let identities = extract::identities(&route.identity, event, &rt.server.trusted_proxies);
    let (signals, state_error) =
        match signals::observe(state, hasher, route, &rt.signals, &identities, event.ts_ms).await {
            Ok(s) => (Some(s), false),
            // Fail open, counted: a state outage must not take the campaign down.
            Err(_) => (None, true),
        };
    let score = match (&signals, route.scored) {
        (Some(signals), true) => score::evaluate(rt, route, &identities, signals),
        _ => Score {
            reasons: if state_error {
                vec!["state_unavailable".to_string()]
            } else {
                Vec::new()
            },
            ..Score::neutral()
        },
    };
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
        features,
    }
}

impl Assessment {
    /// The decision record for this assessment of `event`.
    pub fn record<'a>(
        &'a self,
        rt: &'a Runtime,
        event: &'a Event,
        request_id: &'a str,
        capture: bool,
    ) -> DecisionRecord<'a> {
        let route = &rt.routes[self.route];
        DecisionRecord {
            ts_ms: event.ts_ms,
            request_id,
            route: &route.name,
            action: route.action.as_str(),
            decision: self.decision,
            score: round_score(self.score.value),
            reasons: &self.score.reasons,
            identities: &self.identities,
            mode: self.mode.as_str(),
            label: event.label.as_ref(),
            event: capture.then_some(event),
        }
    }
}
