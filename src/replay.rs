//! Replay: a file of events through the same pipeline as the live gateway, in event
//! time, one decision record per event in input order; and the backtest diff of two
//! configs over the same events.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

use crate::decide::Decision;
use crate::event::Event;
use crate::extract::{self, IdentitySpec};
use crate::pipeline::{self, Assessment};
use crate::record::DecisionRecord;
use crate::report::{Confusion, Tally};
use crate::runtime::{self, Runtime};
use crate::score::Reason;
use crate::state::{memory, Backend, KeyHasher, MemoryState, RedisState};

/// Replay keys state with a fixed seed: the same input gives the same output, always.
const REPLAY_SEED: u64 = 0x5249_534b_4741_5445;

#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub input: String,
    pub output: String,
    pub baseline: Option<PathBuf>,
    pub report: Option<PathBuf>,
    pub strict: bool,
    /// Progress lines on stderr about once a second.
    pub progress: bool,
    /// Also write every scored request's feature vector here, as CSV (for analysis
    /// and training).
    pub features_out: Option<PathBuf>,
    /// `redis://HOST:PORT`: keep the state in Redis (in a fresh key namespace) instead
    /// of memory, to check that both backends decide alike.
    pub state: Option<String>,
}

/// What a replay found: the tally of the (new) config, and the diff against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub summary: Tally,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<Diff>,
    pub seconds: f64,
    pub events_per_second: f64,
}

/// One config replaying: its runtime and its own state.
struct Replayer {
    rt: Runtime,
    state: Backend,
    hasher: KeyHasher,
    unrouted: IdentitySpec,
    /// Drives the Redis backend's calls; the memory backend never waits.
    tokio: Option<tokio::runtime::Runtime>,
}

impl Replayer {
    fn new(path: &Path, state: Option<&str>) -> anyhow::Result<Replayer> {
        let hasher = KeyHasher::seeded(REPLAY_SEED);
        let mut rt = runtime::load(path, &hasher)?;
        // A backtest that silently dropped the model would not be the backtest asked for.
        if let Some(error) = rt.model_error() {
            anyhow::bail!("{}: {error}", path.display());
        }
        if let Some(choice) = state {
            crate::server::choose_backend(choice, &mut rt.state).map_err(anyhow::Error::msg)?;
        }
        let (state, tokio) = match rt.state.backend {
            crate::config::StateBackend::Memory => (
                Backend::Memory(MemoryState::new(
                    rt.state.memory_budget_mb * 1024 * 1024,
                    rt.state.ttl_s * 1_000,
                )),
                None,
            ),
            crate::config::StateBackend::Redis => {
                let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let (redis, _) = tokio
                    .block_on(RedisState::connect(&rt.state))
                    .map_err(|e| anyhow::anyhow!("state backend redis ({}): {e}", rt.state.redis_url))?;
                // A namespace of its own, so that the replay starts from empty state.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let prefix = format!("{}-replay-{}-{nanos:x}", rt.state.key_prefix, std::process::id());
                let redis = redis
                    .with_prefix(&prefix)
                    .with_timeout(std::time::Duration::from_secs(10));
                (Backend::Redis(Box::new(redis)), Some(tokio))
            }
        };
        Ok(Replayer {
            rt,
            state,
            hasher,
            unrouted: IdentitySpec::default(),
            tokio,
        })
    }

    fn assess(&self, event: &Event) -> anyhow::Result<Option<Assessment>> {
        let assess = pipeline::assess(&self.rt, &self.state, &self.hasher, event);
        let a = match &self.tokio {
            Some(tokio) => tokio.block_on(assess),
            None => memory::ready(assess),
        };
        // A replay that silently degraded would not be the replay asked for.
        anyhow::ensure!(
            !a.as_ref().is_some_and(|a| a.state_error),
            "the state backend failed at event ts_ms {}",
            event.ts_ms
        );
        Ok(a)
    }

    /// The record of one event, built in `line` (reused from record to record); unrouted
    /// events get an `unmatched` record so that the output has exactly one line per
    /// input line.
    fn write_record(
        &self,
        out: &mut impl Write,
        line: &mut Vec<u8>,
        event: &Event,
        a: Option<&Assessment>,
        id: &str,
    ) -> io::Result<()> {
        line.clear();
        match a {
            Some(a) => a
                .record(&self.rt, event.ts_ms, id, event.label.as_ref(), None)
                .write_json(line),
            None => {
                let identities = extract::identities(&self.unrouted, event, &self.rt.server.trusted_proxies);
                let record = DecisionRecord {
                    ts_ms: event.ts_ms,
                    request_id: id,
                    route: "unmatched",
                    action: "other",
                    decision: Decision::Allow,
                    score: 0.0,
                    reasons: &[],
                    identities: &identities,
                    mode: self.rt.server.mode.as_str(),
                    model_score: None,
                    label: event.label.as_ref(),
                    event: None,
                };
                record.write_json(line);
            }
        }
        line.push(b'\n');
        out.write_all(line)
    }
}

/// Runs a replay (and a diff when `baseline` is set).
pub fn run(opts: &Options) -> anyhow::Result<Outcome> {
    let current = Replayer::new(&opts.config, opts.state.as_deref())?;
    let baseline = opts
        .baseline
        .as_deref()
        .map(|p| Replayer::new(p, opts.state.as_deref()))
        .transpose()?;
    let input = open_input(&opts.input)?;
    let mut output = open_output(&opts.output)?;
    let mut record = Vec::with_capacity(512);
    let mut summary = Tally::default();
    let mut diff = baseline.as_ref().map(|_| Diff::default());
    let mut baseline_tally = Tally::default();
    let mut features_out = match &opts.features_out {
        Some(path) => {
            let mut w = BufWriter::new(File::create(path).with_context(|| format!("creating {}", path.display()))?);
            let names: Vec<&str> = crate::features::ALL.iter().map(|f| f.name()).collect();
            writeln!(w, "request_id,route,fraud,kind,decision,{}", names.join(","))?;
            Some(w)
        }
        None => None,
    };
    let started = Instant::now();
    let mut last_progress = started;

    for (n, line) in input.lines().enumerate() {
        let line_no = n + 1;
        let line = line.with_context(|| format!("{}: reading line {line_no}", opts.input))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(e) => {
                if opts.strict {
                    anyhow::bail!("{}:{line_no}: not an event: {e}", opts.input);
                }
                summary.bad_lines += 1;
                if summary.bad_lines <= 20 {
                    eprintln!("{}:{line_no}: skipped, not an event: {e}", opts.input);
                } else if summary.bad_lines == 21 {
                    eprintln!("(further bad lines are counted, not printed)");
                }
                continue;
            }
        };
        let id = event
            .header("x-request-id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("line-{line_no}"));
        let a = current.assess(&event)?;
        current
            .write_record(&mut output, &mut record, &event, a.as_ref(), &id)
            .context("writing decision records")?;
        let (route, decision, reasons, scored) = describe(&current.rt, a.as_ref());
        summary.add(route, decision, reasons, event.label.as_ref(), scored);
        if let (Some(w), Some(features), true) = (
            features_out.as_mut(),
            a.as_ref().and_then(|a| a.features.as_ref()),
            scored,
        ) {
            let (fraud, kind) = match &event.label {
                Some(l) => (u8::from(l.fraud).to_string(), l.kind.clone().unwrap_or_default()),
                None => (String::new(), String::new()),
            };
            let values: Vec<String> = features.as_slice().iter().map(|v| v.to_string()).collect();
            writeln!(
                w,
                "{id},{route},{fraud},{kind},{},{}",
                decision.as_str(),
                values.join(",")
            )?;
        }

        if let (Some(base), Some(diff)) = (&baseline, diff.as_mut()) {
            let b = base.assess(&event)?;
            let (_, old, old_reasons, base_scored) = describe(&base.rt, b.as_ref());
            baseline_tally.add(route, old, old_reasons, event.label.as_ref(), base_scored);
            if old != decision {
                diff.flip(route, old, decision, old_reasons, reasons, &id);
            }
        }

        if opts.progress && summary.events % 4096 == 0 && last_progress.elapsed().as_secs() >= 1 {
            last_progress = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "replayed {} events ({:.0}/s)",
                summary.events,
                summary.events as f64 / secs
            );
        }
    }
    output.flush().context("writing decision records")?;
    if let Some(w) = features_out.as_mut() {
        w.flush().context("writing features")?;
    }
    drop(output);
    if let Some(diff) = diff.as_mut() {
        diff.baseline = baseline_tally.confusion;
        diff.current = summary.confusion;
    }
    let seconds = started.elapsed().as_secs_f64();
    let outcome = Outcome {
        events_per_second: if seconds > 0.0 {
            summary.events as f64 / seconds
        } else {
            0.0
        },
        summary,
        diff,
        seconds,
    };
    if let Some(path) = &opts.report {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(BufWriter::new(f), &outcome).context("writing the report")?;
    }
    Ok(outcome)
}

/// Route name, decision, reasons, and whether the route is scored at all.
fn describe<'a>(rt: &'a Runtime, a: Option<&'a Assessment>) -> (&'a str, Decision, &'a [Reason], bool) {
    match a {
        Some(a) => (
            &rt.routes[a.route].name,
            a.decision,
            &a.score.reasons,
            rt.routes[a.route].scored,
        ),
        None => ("unmatched", Decision::Allow, &[], false),
    }
}

/// How a candidate config's decisions differ from the baseline's on the same events.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub flips: u64,
    pub by_route: BTreeMap<String, u64>,
    /// Keyed `old->new`.
    pub by_change: BTreeMap<String, u64>,
    /// Reasons present on one side only of a flipped request (`+reason` added by the
    /// candidate, `-reason` gone from it).
    pub by_reason: BTreeMap<String, u64>,
    /// Up to five request ids per `old->new`.
    pub examples: BTreeMap<String, Vec<String>>,
    pub baseline: Confusion,
    pub current: Confusion,
}

impl Diff {
    fn flip(
        &mut self,
        route: &str,
        old: Decision,
        new: Decision,
        old_reasons: &[Reason],
        new_reasons: &[Reason],
        id: &str,
    ) {
        self.flips += 1;
        *self.by_route.entry(route.to_string()).or_default() += 1;
        let change = format!("{}->{}", old.as_str(), new.as_str());
        let examples = self.examples.entry(change.clone()).or_default();
        if examples.len() < 5 {
            examples.push(id.to_string());
        }
        *self.by_change.entry(change).or_default() += 1;
        for r in new_reasons.iter().filter(|r| !old_reasons.contains(r)) {
            *self.by_reason.entry(format!("+{r}")).or_default() += 1;
        }
        for r in old_reasons.iter().filter(|r| !new_reasons.contains(r)) {
            *self.by_reason.entry(format!("-{r}")).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!("backtest diff: {} requests change decision\n", self.flips);
        for (title, map) in [
            ("route", &self.by_route),
            ("old->new", &self.by_change),
            ("reason", &self.by_reason),
        ] {
            if map.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\n{title:<40} {:>9}", "requests");
            for (k, n) in map {
                let _ = writeln!(s, "{k:<40} {n:>9}");
            }
        }
        for (change, ids) in &self.examples {
            let _ = writeln!(s, "examples {change}: {}", ids.join(", "));
        }
        if self.current.labelled() > 0 {
            let (b, c) = (&self.baseline, &self.current);
            let _ = writeln!(
                s,
                "\nrecall {:.4} -> {:.4} ({:+.4})   false-positive rate {:.4}% -> {:.4}% ({:+.4} pp)",
                b.recall(),
                c.recall(),
                c.recall() - b.recall(),
                b.false_positive_rate() * 100.0,
                c.false_positive_rate() * 100.0,
                (c.false_positive_rate() - b.false_positive_rate()) * 100.0
            );
        }
        s
    }
}

/// `-` is stdin; a `.gz` name is decompressed.
pub fn open_input(name: &str) -> anyhow::Result<Box<dyn BufRead>> {
    if name == "-" {
        return Ok(Box::new(BufReader::new(io::stdin())));
    }
    let f = File::open(name).with_context(|| format!("opening {name}"))?;
    if name.ends_with(".gz") {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f))))
    } else {
        Ok(Box::new(BufReader::with_capacity(1 << 16, f)))
    }
}

/// `-` is stdout; a `.gz` name is compressed.
pub fn open_output(name: &str) -> anyhow::Result<Box<dyn Write>> {
    if name == "-" {
        return Ok(Box::new(BufWriter::new(io::stdout())));
    }
    let f = File::create(name).with_context(|| format!("creating {name}"))?;
    if name.ends_with(".gz") {
        Ok(Box::new(BufWriter::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::fast(),
        ))))
    } else {
        Ok(Box::new(BufWriter::with_capacity(1 << 16, f)))
    }
}
