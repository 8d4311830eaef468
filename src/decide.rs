//! Decide: a score and the hard outcomes of lists and limits → allow, review, challenge or block.

use serde::Serialize;

use crate::config::Mode;

/// What the gateway does with a request, from mildest to harshest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Review,
    Challenge,
    Block,
}

impl Decision {
    pub const ALL: [Decision; 4] = [Decision::Allow, Decision::Review, Decision::Challenge, Decision::Block];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Review => "review",
            Decision::Challenge => "challenge",
            Decision::Block => "block",
        }
    }

    /// Challenge and block are answered by the gateway; allow and review are forwarded.
    pub fn stops(self) -> bool {
        self >= Decision::Challenge
    }
}

/// A route's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub review: f64,
    pub challenge: f64,
    pub block: f64,
    pub mode: Option<Mode>,
}

/// Which configured answer a stopped request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseKind {
    Block,
    Challenge,
    RateLimit,
}

/// The decision for a score, at least `floor` (what lists and limits demanded).
pub fn decide(policy: &Policy, score: f64, floor: Decision) -> Decision {
    let by_score = if score >= policy.block {
        Decision::Block
    } else if score >= policy.challenge {
        Decision::Challenge
    } else if score >= policy.review {
        Decision::Review
    } else {
        Decision::Allow
    };
    by_score.max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(score: f64, floor: Decision, expect: Decision) {
        let policy = Policy {
            review: 0.3,
            challenge: 0.6,
            block: 0.85,
            mode: None,
        };
        assert_eq!(decide(&policy, score, floor), expect, "score {score} floor {floor:?}");
    }

    #[test]
    fn thresholds_and_floors() {
        check(0.0, Decision::Allow, Decision::Allow);
        check(0.29, Decision::Allow, Decision::Allow);
        check(0.3, Decision::Allow, Decision::Review);
        check(0.6, Decision::Allow, Decision::Challenge);
        check(0.85, Decision::Allow, Decision::Block);
        check(1.0, Decision::Allow, Decision::Block);
        check(0.1, Decision::Block, Decision::Block);
        check(0.9, Decision::Challenge, Decision::Block);
        assert!(Decision::Block.stops() && Decision::Challenge.stops() && !Decision::Review.stops());
    }
}
