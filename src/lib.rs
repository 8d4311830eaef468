//! riskgate: an anti-fraud risk-scoring gateway for marketing campaigns.
// No unsafe code, except in `state::table` (a hash table whose slots can be prefetched).
#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod body_fields;
pub mod cli;
pub mod config;
pub mod decide;
pub mod demo;
pub mod event;
pub mod expr;
pub mod extract;
#[cfg(unix)]
pub mod fd_table;
pub mod features;
pub mod ip_text;
pub mod metrics;
pub mod model;
pub mod offenders;
pub mod pipeline;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod replay;
pub mod report;
pub mod runtime;
pub mod score;
pub mod server;
pub mod signals;
pub mod simulate;
pub mod state;
pub mod train;
pub mod upstream;
