//! riskgate: an anti-fraud risk-scoring gateway for marketing campaigns.
#![forbid(unsafe_code)]

pub mod config;
pub mod decide;
pub mod event;
pub mod expr;
pub mod extract;
pub mod features;
pub mod pipeline;
pub mod record;
pub mod runtime;
pub mod score;
pub mod signals;
pub mod state;
pub mod admin;
pub mod cli;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod audit;
pub mod report;
pub mod replay;
pub mod demo;
pub mod simulate;
