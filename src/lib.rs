//! riskgate: an anti-fraud risk-scoring gateway for marketing campaigns.
#![forbid(unsafe_code)]

pub mod event;
pub mod extract;
pub mod features;
pub mod state;
