//! Reload: on SIGHUP or a change of the config or a list file, build a whole new runtime
//! and swap it in; a bad file keeps the running one. Counters and graphs live in the
//! state, outside the runtime, so they survive.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::metrics::Metrics;
use crate::runtime::{self, Fingerprint, Runtime};
use crate::server::Gateway;
use crate::state::StateStore;

async fn fingerprints(paths: &[PathBuf]) -> Vec<Fingerprint> {
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        out.push(Fingerprint::of(tokio::fs::metadata(p).await.ok()));
    }
    out
}

/// SIGHUP, registered before the listeners open: until then its default action ends
/// the process, and a client could be served before the watch task first runs.
#[cfg(unix)]
pub type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
pub type Hangup = ();

/// Registers SIGHUP (must be called within a Tokio runtime).
pub fn hangup() -> Hangup {
    #[cfg(unix)]
    return tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
}

/// The next delivery of a registered signal; never, for one that could not be registered.
#[cfg(unix)]
pub async fn delivered(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Watches for SIGHUP and file changes until shutdown.
pub async fn watch<S: StateStore>(gw: Arc<Gateway<S>>, hup: Hangup, mut shutdown: watch::Receiver<bool>) {
    // Compared against the fingerprints taken when the running config was read, so a
    // change made while it was loading is not missed.
    let (mut watched, mut seen): (Vec<PathBuf>, Vec<Fingerprint>) = gw.runtime.load().watched.iter().cloned().unzip();
    let poll = Duration::from_millis(gw.runtime.load().server.reload_poll_ms);
    // The first look one poll from now: an immediate one could race a SIGHUP sent for
    // the same edit and reload it twice.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hup = hup;
    #[cfg(not(unix))]
    let () = hup;
    loop {
        #[cfg(unix)]
        let hangup = delivered(&mut hup);
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            _ = hangup => true,
            _ = shutdown.changed() => return,
        };
        let now = fingerprints(&watched).await;
        if !forced && now == seen {
            continue;
        }
        seen = now;
        if reload(&gw, if forced { "SIGHUP" } else { "file change" }).await.is_ok() {
            (watched, seen) = gw.runtime.load().watched.iter().cloned().unzip();
        }
    }
}

/// Builds a new runtime from the config file and swaps it in, or keeps the running one
/// and returns the problems.
pub async fn reload<S: StateStore>(gw: &Arc<Gateway<S>>, cause: &str) -> Result<(), String> {
    let path = gw.config_path.clone();
    let hasher = gw.hasher.clone();
    let previous = gw.runtime.load_full();
    let built = tokio::task::spawn_blocking(move || runtime::load_reusing(&path, &hasher, Some(&previous))).await;
    let outcome = match built {
        Ok(Ok(mut rt)) => match gw.overrides.apply(&mut rt) {
            Ok(()) => Ok(rt),
            Err(e) => Err(e),
        },
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("reload task failed: {e}")),
    };
    match outcome {
        Ok(mut rt) => {
            let old = gw.runtime.load();
            model_outcome(&gw.metrics, &mut rt, Some(&old));
            if rt.server.listen != old.server.listen || rt.server.admin_listen != old.server.admin_listen {
                warn!("listen addresses changed in the config; they take effect only at restart");
            }
            gw.metrics.register_config(&rt);
            gw.runtime.store(Arc::new(rt));
            gw.metrics.reloads.with_label_values(&["success"]).inc();
            gw.metrics.config_last_reload_success.set(1);
            info!(cause, config = %gw.config_path.display(), "config reloaded");
            Ok(())
        }
        Err(problems) => {
            gw.metrics.reloads.with_label_values(&["failure"]).inc();
            gw.metrics.config_last_reload_success.set(0);
            error!(cause, "config reload refused; the running config stays: {problems}");
            Err(problems)
        }
    }
}

/// Logs and counts what happened to the model file in a load (start-up or reload): a
/// file refused keeps the previous model serving, if there was one.
pub fn model_outcome(metrics: &Metrics, rt: &mut Runtime, previous: Option<&Runtime>) {
    let Some(slot) = rt.model.as_ref() else {
        if previous.is_some_and(|p| p.model.is_some()) {
            info!("model switched off: no [model] section any more");
        }
        return;
    };
    if !slot.fresh {
        return;
    }
    let path = slot.path.display().to_string();
    match (&slot.loaded, slot.error.clone()) {
        (Some(m), None) => {
            metrics.model_reloads.with_label_values(&["success"]).inc();
            let before = previous
                .and_then(|p| p.model.as_ref())
                .and_then(|s| s.loaded.as_ref())
                .map(|m| m.id.clone());
            let previous = before.as_deref().unwrap_or("none");
            info!(model = %path, id = %m.id, kind = m.kind, previous, "model loaded");
        }
        (_, Some(error)) => {
            metrics.model_reloads.with_label_values(&["failure"]).inc();
            let kept = previous.is_some_and(|p| rt.keep_previous_model(p));
            match rt.model.as_ref().and_then(|s| s.loaded.as_ref()) {
                Some(m) if kept => {
                    error!(model = %path, kept = %m.id, "model file refused; the previous model keeps serving: {error}")
                }
                _ => error!(model = %path, "model file refused; scoring with rules only: {error}"),
            }
        }
        (None, None) => {}
    }
}
