//! Train: labelled traffic → feature vectors through the same `pipeline::assess` as
//! serving (event-time order, so each vector is what the gateway saw at that moment) →
//! smartcore random forest and logistic regression, compared and calibrated → a model
//! file (`model::ModelFile`) with its training summary and evaluation figures.
//!
//! Split: the earliest `train_share` of labelled requests trains; the rest, minus every
//! actor (crew, person) already seen in training, is split by actor into a calibration
//! half (choosing the model and fitting Platt scaling) and a test half (the figures).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};

use crate::event::{Event, Label};
use crate::features::{self, Features, COUNT, FEATURE_SET_VERSION};
use crate::model::{self, Classifier, Model, ModelFile, Platt, Tree, FORMAT};
use crate::pipeline;
use crate::runtime;
use crate::state::memory::ready;
use crate::state::{KeyHasher, MemoryState};

/// Training keys state with a fixed seed, like replay: the same input, the same vectors.
const TRAIN_STATE_SEED: u64 = 0x5249_534b_4741_5445;

/// The false-positive rate the headline recall is quoted at.
pub const TARGET_FPR: f64 = 0.005;

#[derive(Debug, Clone)]
pub struct Options {
    /// Labelled events, or audit-log decision records with embedded events (JSONL, `.gz`).
    pub inputs: Vec<String>,
    /// request id → label (JSONL: `{"request_id": "…", "fraud": true, "kind": "…"}`).
    pub labels: Option<String>,
    /// The config whose routes, identities and signal settings build the features.
    pub config: PathBuf,
    pub out: PathBuf,
    pub seed: u64,
    /// Earliest share of labelled requests used for training.
    pub train_share: f64,
    /// Training rows kept at most (a deterministic subsample; fraud kept first).
    pub max_train_rows: usize,
    pub trees: u16,
    pub max_depth: u16,
    /// Requests with no label: skipped (default) or taken as legitimate.
    pub unlabelled_legit: bool,
    pub progress: bool,
}

/// One labelled, scored request.
#[derive(Debug, Clone)]
struct Row {
    features: Features,
    fraud: bool,
    kind: String,
    /// Crew or person (the label's actor, else the account); rows of one actor stay on
    /// one side of the split.
    actor: Option<String>,
    id: String,
}

/// A line of a labels file.
#[derive(Debug, Deserialize)]
struct LabelLine {
    request_id: String,
    #[serde(flatten)]
    label: Label,
}

/// An audit-log line: a decision record, with the event when `capture_events` was on.
#[derive(Debug, Deserialize)]
struct AuditLine {
    request_id: String,
    #[serde(default)]
    label: Option<Label>,
    #[serde(default)]
    event: Option<Event>,
}

/// Figures of one model on one slice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    pub rows: usize,
    pub fraud: usize,
    pub pr_auc: f64,
    pub roc_auc: f64,
    /// Recall at the highest threshold whose false-positive rate is at most 0.5 %.
    pub recall_at_fpr_0_5pct: f64,
    /// That threshold, on the calibrated score.
    pub threshold_at_fpr_0_5pct: f64,
    /// Recall and false-positive rate with the calibrated score at or above 0.5.
    pub recall_at_0_5: f64,
    pub fpr_at_0_5: f64,
    pub brier: f64,
    /// Per label kind at the 0.5 %-FPR threshold: the share flagged (recall for attack
    /// kinds, false-positive rate for legitimate segments).
    pub per_kind: BTreeMap<String, KindFigures>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KindFigures {
    pub fraud: bool,
    pub rows: usize,
    pub flagged: f64,
}

/// What `train` did, for the caller to print.
#[derive(Debug)]
pub struct Outcome {
    pub file: ModelFile,
    /// `random_forest` or `logistic_regression`.
    pub chosen: String,
    /// Test-slice figures of both candidates, by name.
    pub test: BTreeMap<String, Figures>,
    pub seconds: f64,
}

macro_rules! progress {
    ($opts:expr, $($arg:tt)*) => {
        if $opts.progress {
            eprintln!($($arg)*);
        }
    };
}

/// Runs the whole training and writes the model file.
pub fn run(opts: &Options) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        opts.train_share > 0.0 && opts.train_share < 1.0,
        "--train-share must be between 0 and 1"
    );
    anyhow::ensure!(opts.max_train_rows >= 100, "--max-train-rows must be at least 100");
    anyhow::ensure!(
        opts.trees > 0 && opts.max_depth > 0,
        "--trees and --max-depth must be above 0"
    );
    let started = Instant::now();
    let rows = build_rows(opts)?;
    let file = fit(opts, &rows, started)?;
    let text = serde_json::to_string(&file)? + "\n";
    // What serving will load: check it loads before it replaces anything.
    let served = Model::from_json(&text, &opts.out.display().to_string())?;
    if let Some(dir) = opts.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A running gateway watches this file: it must never see half of it.
    let tmp = opts.out.with_extension("tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &opts.out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), opts.out.display()))?;
    progress!(
        opts,
        "wrote {} ({} bytes, {} model {})",
        opts.out.display(),
        text.len(),
        served.kind,
        served.id
    );
    let eval: Evaluation = serde_json::from_value(file.evaluation.clone())?;
    Ok(Outcome {
        file,
        chosen: eval.chosen,
        test: eval.test,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads the inputs, puts every event in event-time order through the pipeline, and
/// keeps the labelled, scored requests with their feature vectors.
fn build_rows(opts: &Options) -> anyhow::Result<Vec<Row>> {
    let labels = match &opts.labels {
        Some(path) => read_labels(path)?,
        None => HashMap::new(),
    };
    let mut events: Vec<(Event, String, Option<Label>)> = Vec::new();
    for input in &opts.inputs {
        let reader = crate::replay::open_input(input)?;
        let before = events.len();
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("{input}: reading line {}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let (event, id, label) = match serde_json::from_str::<Event>(&line) {
                Ok(e) => {
                    let id = e
                        .header("x-request-id")
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{input}:{}", n + 1));
                    let label = e.label.clone();
                    (e, id, label)
                }
                Err(as_event) => match serde_json::from_str::<AuditLine>(&line) {
                    Ok(AuditLine {
                        request_id,
                        label,
                        event: Some(e),
                    }) => {
                        let label = label.or_else(|| e.label.clone());
                        (e, request_id, label)
                    }
                    Ok(_) => anyhow::bail!(
                        "{input}:{}: a decision record without its event (set [audit] capture_events = true)",
                        n + 1
                    ),
                    Err(_) => anyhow::bail!("{input}:{}: neither an event nor a decision record: {as_event}", n + 1),
                },
            };
            let label = labels.get(&id).cloned().or(label).or_else(|| {
                opts.unlabelled_legit.then(|| Label {
                    fraud: false,
                    kind: Some("unlabelled".into()),
                    actor: None,
                })
            });
            events.push((event, id, label));
        }
        progress!(opts, "read {} events from {input}", events.len() - before);
    }
    // Event time, ties in input order: features as they were when each request arrived.
    events.sort_by_key(|(e, _, _)| e.ts_ms);

    let hasher = KeyHasher::seeded(TRAIN_STATE_SEED);
    let rt = runtime::load_config(&opts.config, &hasher)?;
    let state = MemoryState::new(rt.state.memory_budget_mb * 1024 * 1024, rt.state.ttl_s * 1_000);
    let mut rows = Vec::new();
    let clock = Instant::now();
    for (i, (event, id, label)) in events.iter().enumerate() {
        let a = ready(pipeline::assess(&rt, &state, &hasher, event));
        if opts.progress && (i + 1) % 50_000 == 0 {
            eprintln!(
                "features: {} of {} events ({:.0}/s)",
                i + 1,
                events.len(),
                (i + 1) as f64 / clock.elapsed().as_secs_f64()
            );
        }
        let (Some(a), Some(label)) = (a, label) else {
            continue;
        };
        let (true, Some(features)) = (rt.routes[a.route].scored, a.features) else {
            continue;
        };
        let kind = label
            .kind
            .clone()
            .unwrap_or_else(|| if label.fraud { "fraud" } else { "legit" }.to_string());
        let actor = label
            .actor
            .clone()
            .or_else(|| a.identities.user.as_ref().map(|u| format!("user:{u}")));
        rows.push(Row {
            features,
            fraud: label.fraud,
            kind,
            actor,
            id: id.clone(),
        });
    }
    let fraud = rows.iter().filter(|r| r.fraud).count();
    progress!(
        opts,
        "{} events in event-time order → {} labelled scored requests ({} fraud)",
        events.len(),
        rows.len(),
        fraud
    );
    anyhow::ensure!(
        fraud > 0 && fraud < rows.len(),
        "training needs both fraud and legitimate labelled requests on scored routes (got {fraud} fraud of {})",
        rows.len()
    );
    Ok(rows)
}

fn read_labels(path: &str) -> anyhow::Result<HashMap<String, Label>> {
    let mut out = HashMap::new();
    for (n, line) in crate::replay::open_input(path)?.lines().enumerate() {
        let line = line.with_context(|| format!("{path}: reading line {}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: LabelLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{path}:{}: expected {{\"request_id\": …, \"fraud\": true|false}}",
                n + 1
            )
        })?;
        out.insert(l.request_id, l.label);
    }
    Ok(out)
}

/// The three slices, as row indices in time order.
struct Split {
    train: Vec<usize>,
    calibration: Vec<usize>,
    test: Vec<usize>,
    split_at: usize,
    excluded: usize,
}

fn split(rows: &[Row], train_share: f64) -> Split {
    let split_at = ((rows.len() as f64) * train_share.clamp(0.05, 0.95)) as usize;
    let train: Vec<usize> = (0..split_at).collect();
    let seen: HashSet<&str> = rows[..split_at].iter().filter_map(|r| r.actor.as_deref()).collect();
    let (mut calibration, mut test, mut excluded) = (Vec::new(), Vec::new(), 0);
    // Each new actor of a kind goes to the side that has fewer actors of that kind, so
    // both sides see every kind that has at least two actors left.
    let mut side_of: HashMap<&str, bool> = HashMap::new();
    let mut actors_per_kind: HashMap<&str, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate().skip(split_at) {
        let group = match r.actor.as_deref() {
            Some(a) if seen.contains(a) => {
                excluded += 1;
                continue;
            }
            Some(a) => a,
            None => r.id.as_str(),
        };
        let to_test = *side_of.entry(group).or_insert_with(|| {
            let n = actors_per_kind.entry(r.kind.as_str()).or_default();
            *n += 1;
            *n % 2 == 0
        });
        if to_test {
            test.push(i);
        } else {
            calibration.push(i);
        }
    }
    Split {
        train,
        calibration,
        test,
        split_at,
        excluded,
    }
}

/// A deterministic subsample of at most `cap` rows: fraud rows first (up to half), the
/// rest legitimate, each chosen by a seeded hash; returned in time order.
fn subsample(rows: &[Row], idx: &[usize], cap: usize, seed: u64) -> Vec<usize> {
    if idx.len() <= cap {
        return idx.to_vec();
    }
    let key = |i: usize| model::fnv1a(&[seed.to_le_bytes(), (i as u64).to_le_bytes()].concat());
    let (mut pos, mut neg): (Vec<usize>, Vec<usize>) = idx.iter().partition(|&&i| rows[i].fraud);
    pos.sort_by_key(|&i| key(i));
    neg.sort_by_key(|&i| key(i));
    pos.truncate(cap / 2);
    neg.truncate(cap - pos.len());
    let mut out: Vec<usize> = pos.into_iter().chain(neg).collect();
    out.sort_unstable();
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Evaluation {
    chosen: String,
    criterion: String,
    calibration: BTreeMap<String, Figures>,
    test: BTreeMap<String, Figures>,
}

/// One candidate: its name and its classifier in the compact form.
struct Candidate {
    name: &'static str,
    classifier: Classifier,
}

fn fit(opts: &Options, rows: &[Row], started: Instant) -> anyhow::Result<ModelFile> {
    let s = split(rows, opts.train_share);
    let train = subsample(rows, &s.train, opts.max_train_rows, opts.seed);
    anyhow::ensure!(
        !s.calibration.is_empty() && !s.test.is_empty(),
        "too few requests after the split to calibrate and evaluate ({} rows)",
        rows.len()
    );
    progress!(
        opts,
        "split: train {} (of {} before the split, subsampled to {}), calibration {}, test {}; {} later rows of actors seen in training left out",
        train.len(),
        s.train.len(),
        opts.max_train_rows,
        s.calibration.len(),
        s.test.len(),
        s.excluded
    );
    let both = |idx: &[usize]| idx.iter().any(|&i| rows[i].fraud) && idx.iter().any(|&i| !rows[i].fraud);
    anyhow::ensure!(
        both(&s.calibration),
        "after the split, the calibration slice needs fraud and legitimate requests of actors not seen in training \
         (it has {} requests, {} fraud): give more traffic, or a lower --train-share",
        s.calibration.len(),
        s.calibration.iter().filter(|&&i| rows[i].fraud).count()
    );
    let y: Vec<u32> = train.iter().map(|&i| u32::from(rows[i].fraud)).collect();
    anyhow::ensure!(
        y.contains(&0) && y.contains(&1),
        "the training slice needs both fraud and legitimate requests"
    );

    let t = Instant::now();
    let forest = fit_forest(opts, rows, &train, &y)?;
    progress!(
        opts,
        "random forest: {} trees, depth <= {} in {:.1} s",
        opts.trees,
        opts.max_depth,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let linear = fit_linear(rows, &train, &y)?;
    progress!(opts, "logistic regression in {:.1} s", t.elapsed().as_secs_f64());

    let mut calibration_figures = BTreeMap::new();
    let mut test_figures = BTreeMap::new();
    let mut fitted = Vec::new();
    for c in [forest, linear] {
        let uncalibrated = compile(&c.classifier, Platt { a: 1.0, b: 0.0 })?;
        let raw = |idx: &[usize]| -> Vec<f64> { idx.iter().map(|&i| uncalibrated.raw(&rows[i].features)).collect() };
        let cal_raw = raw(&s.calibration);
        let cal_y: Vec<bool> = s.calibration.iter().map(|&i| rows[i].fraud).collect();
        let platt = fit_platt(&cal_raw, &cal_y);
        let slice_figures = |idx: &[usize], raw: &[f64]| {
            let scores: Vec<f64> = raw.iter().map(|r| platt.apply(*r)).collect();
            figures(rows, idx, &scores)
        };
        calibration_figures.insert(c.name.to_string(), slice_figures(&s.calibration, &cal_raw));
        let test_raw = raw(&s.test);
        test_figures.insert(c.name.to_string(), slice_figures(&s.test, &test_raw));
        fitted.push((c, platt));
    }
    // Chosen on the calibration slice, so the test figures stay an honest estimate.
    let (best, platt) = fitted
        .into_iter()
        .max_by(|a, b| {
            let pa = calibration_figures[a.0.name].pr_auc;
            let pb = calibration_figures[b.0.name].pr_auc;
            pa.total_cmp(&pb)
        })
        .expect("two candidates");
    for (name, f) in &test_figures {
        progress!(
            opts,
            "test {name:<20} PR-AUC {:.4}  ROC-AUC {:.4}  recall@0.5%FPR {:.4}  (calibration PR-AUC {:.4})",
            f.pr_auc,
            f.roc_auc,
            f.recall_at_fpr_0_5pct,
            calibration_figures[name.as_str()].pr_auc
        );
    }
    progress!(
        opts,
        "chosen: {} (higher PR-AUC on the calibration slice); Platt a={:.4} b={:.4}; {:.1} s in all",
        best.name,
        platt.a,
        platt.b,
        started.elapsed().as_secs_f64()
    );

    let summary = |idx: &[usize]| -> serde_json::Value {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in idx {
            *kinds.entry(rows[i].kind.as_str()).or_default() += 1;
        }
        serde_json::json!({
            "rows": idx.len(),
            "fraud": idx.iter().filter(|&&i| rows[i].fraud).count(),
            "by_kind": kinds,
        })
    };
    let inputs: Vec<String> = opts
        .inputs
        .iter()
        .map(|p| {
            Path::new(p)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let training = serde_json::json!({
        "riskgate_version": env!("CARGO_PKG_VERSION"),
        "inputs": inputs,
        "labels": opts.labels.as_ref().map(|l| Path::new(l).file_name().map(|f| f.to_string_lossy().into_owned())),
        "labelled_scored_requests": rows.len(),
        "seed": opts.seed,
        "train_share": opts.train_share,
        "max_train_rows": opts.max_train_rows,
        "trees": opts.trees,
        "max_depth": opts.max_depth,
        "split": "earliest train_share of requests train; later requests of actors not seen in training are halved by actor into calibration and test",
        "later_rows_of_training_actors_left_out": s.excluded,
        "split_after_request": rows.get(s.split_at.saturating_sub(1)).map(|r| r.id.clone()),
        "train": summary(&train),
        "train_before_subsampling": s.train.len(),
        "calibration": summary(&s.calibration),
        "test": summary(&s.test),
    });
    let evaluation = Evaluation {
        chosen: best.name.to_string(),
        criterion: "PR-AUC on the calibration slice".into(),
        calibration: calibration_figures,
        test: test_figures,
    };
    Ok(ModelFile {
        format: FORMAT.into(),
        feature_set_version: FEATURE_SET_VERSION.into(),
        features: features::ALL.iter().map(|f| f.name().to_string()).collect(),
        classifier: best.classifier,
        calibration: platt,
        training,
        evaluation: serde_json::to_value(evaluation)?,
    })
}

fn compile(classifier: &Classifier, calibration: Platt) -> anyhow::Result<Model> {
    let file = ModelFile {
        format: FORMAT.into(),
        feature_set_version: FEATURE_SET_VERSION.into(),
        features: features::ALL.iter().map(|f| f.name().to_string()).collect(),
        classifier: classifier.clone(),
        calibration,
        training: serde_json::Value::Null,
        evaluation: serde_json::Value::Null,
    };
    Ok(Model::from_file(&file, "(training)")?)
}

fn matrix(rows: &[Row], idx: &[usize], transform: impl Fn(usize, f64) -> f64) -> anyhow::Result<DenseMatrix<f64>> {
    let mut values = Vec::with_capacity(idx.len() * COUNT);
    for &i in idx {
        for (j, v) in rows[i].features.as_slice().iter().enumerate() {
            values.push(transform(j, *v));
        }
    }
    DenseMatrix::new(idx.len(), COUNT, values, false).map_err(|e| anyhow::anyhow!("{e}"))
}

/// smartcore's forest, then its trees in our compact form. smartcore predicts only a
/// majority vote, so each node's value is the fraud share of the training rows that
/// reach it (what a probability forest reports); the hard votes of the compact trees
/// are checked against smartcore's own predictions.
fn fit_forest(opts: &Options, rows: &[Row], train: &[usize], y: &[u32]) -> anyhow::Result<Candidate> {
    let x = matrix(rows, train, |_, v| v)?;
    let params = RandomForestClassifierParameters::default()
        .with_n_trees(opts.trees)
        .with_max_depth(opts.max_depth)
        .with_min_samples_leaf(3)
        .with_seed(opts.seed);
    let rf: RandomForestClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>> =
        RandomForestClassifier::fit(&x, &y.to_vec(), params).map_err(|e| anyhow::anyhow!("random forest: {e}"))?;
    // smartcore keeps its trees private; its serde form is the documented way out.
    let v = serde_json::to_value(&rf)?;
    let classes: Vec<u32> = serde_json::from_value(v["classes"].clone()).context("forest classes")?;
    let fraud_class = classes
        .iter()
        .position(|c| *c == 1)
        .context("forest has no fraud class")?;
    let trees_json = v["trees"].as_array().context("forest without trees")?;
    let mut trees = Vec::with_capacity(trees_json.len());
    let mut outputs = Vec::with_capacity(trees_json.len());
    for t in trees_json {
        let nodes: Vec<SmartNode> = serde_json::from_value(t["nodes"].clone()).context("forest tree nodes")?;
        let n = nodes.len();
        let mut tree = Tree {
            feature: Vec::with_capacity(n),
            threshold: Vec::with_capacity(n),
            left: Vec::with_capacity(n),
            right: Vec::with_capacity(n),
            value: vec![0.0; n],
        };
        for node in &nodes {
            match (node.true_child, node.false_child) {
                (Some(l), Some(r)) => {
                    tree.feature.push(node.split_feature as u16);
                    // smartcore sends a split without a value to the false side.
                    tree.threshold.push(node.split_value.unwrap_or(-f64::MAX));
                    tree.left.push(l as u32);
                    tree.right.push(r as u32);
                }
                _ => {
                    tree.feature.push(0);
                    tree.threshold.push(0.0);
                    tree.left.push(0);
                    tree.right.push(0);
                }
            }
        }
        // Fraud share per node over the training rows.
        let (mut seen, mut fraud) = (vec![0u32; n], vec![0u32; n]);
        for (k, &i) in train.iter().enumerate() {
            let x = rows[i].features.as_slice();
            let mut j = 0usize;
            loop {
                seen[j] += 1;
                fraud[j] += y[k];
                if tree.left[j] == 0 {
                    break;
                }
                j = if x[tree.feature[j] as usize] <= tree.threshold[j] {
                    tree.left[j]
                } else {
                    tree.right[j]
                } as usize;
            }
        }
        for j in 0..n {
            tree.value[j] = if seen[j] > 0 {
                f64::from(fraud[j]) / f64::from(seen[j])
            } else {
                // Never reached by the training rows: a leaf as smartcore labels it.
                f64::from(u8::from(nodes[j].output == fraud_class))
            };
        }
        outputs.push(nodes.iter().map(|n| n.output == fraud_class).collect::<Vec<_>>());
        trees.push(tree);
    }
    // The compact trees must vote exactly as smartcore's forest predicts.
    let check: Vec<usize> = train.iter().copied().step_by(7).take(2_000).collect();
    let predicted = rf
        .predict(&matrix(rows, &check, |_, v| v)?)
        .map_err(|e| anyhow::anyhow!("random forest: {e}"))?;
    for (k, &i) in check.iter().enumerate() {
        let x = rows[i].features.as_slice();
        let votes = trees
            .iter()
            .zip(&outputs)
            .filter(|(t, out)| {
                let mut j = 0usize;
                while t.left[j] != 0 {
                    j = if x[t.feature[j] as usize] <= t.threshold[j] {
                        t.left[j]
                    } else {
                        t.right[j]
                    } as usize;
                }
                out[j]
            })
            .count();
        // A tied vote is smartcore's to break; every other vote must agree.
        if votes * 2 != trees.len() {
            anyhow::ensure!(
                (votes * 2 > trees.len()) == (predicted[k] == 1),
                "compact forest disagrees with smartcore on training row {i}"
            );
        }
    }
    Ok(Candidate {
        name: "random_forest",
        classifier: Classifier::RandomForest { trees },
    })
}

#[derive(Debug, Deserialize)]
struct SmartNode {
    output: usize,
    split_feature: usize,
    split_value: Option<f64>,
    true_child: Option<usize>,
    false_child: Option<usize>,
}

/// smartcore's logistic regression on standardized, log-squashed features; its
/// coefficients and intercept are public, so the compact form is exact.
fn fit_linear(rows: &[Row], train: &[usize], y: &[u32]) -> anyhow::Result<Candidate> {
    let n = train.len() as f64;
    let mut mean = vec![0.0; COUNT];
    let mut sq = vec![0.0; COUNT];
    for &i in train {
        for (j, v) in rows[i].features.as_slice().iter().enumerate() {
            let t = model::squash(*v);
            mean[j] += t;
            sq[j] += t * t;
        }
    }
    let mut scale = vec![1.0; COUNT];
    for j in 0..COUNT {
        mean[j] /= n;
        let var = (sq[j] / n - mean[j] * mean[j]).max(0.0);
        // A constant feature keeps scale 1: its standardized value is always 0.
        scale[j] = if var > 1e-12 { var.sqrt() } else { 1.0 };
    }
    let x = matrix(rows, train, |j, v| (model::squash(v) - mean[j]) / scale[j])?;
    let params = LogisticRegressionParameters::default().with_alpha(1.0);
    let lr: LogisticRegression<f64, u32, DenseMatrix<f64>, Vec<u32>> =
        LogisticRegression::fit(&x, &y.to_vec(), params).map_err(|e| anyhow::anyhow!("logistic regression: {e}"))?;
    use smartcore::linalg::basic::arrays::Array;
    let coef: Vec<f64> = (0..COUNT).map(|j| *lr.coefficients().get((0, j))).collect();
    let mut intercept = *lr.intercept().get((0, 0));
    let mut coef = coef;
    // smartcore's positive class is the second of its sorted classes, i.e. fraud (1).
    if lr.classes().first() == Some(&1) {
        coef.iter_mut().for_each(|c| *c = -*c);
        intercept = -intercept;
    }
    Ok(Candidate {
        name: "logistic_regression",
        classifier: Classifier::LogisticRegression {
            mean,
            scale,
            coef,
            intercept,
        },
    })
}

/// Platt scaling by Newton's method on the log loss, with Platt's smoothed targets
/// (so that a perfectly separated slice does not drive the slope to infinity).
pub fn fit_platt(raw: &[f64], fraud: &[bool]) -> Platt {
    let pos = fraud.iter().filter(|f| **f).count() as f64;
    let neg = fraud.len() as f64 - pos;
    let (hi, lo) = ((pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0));
    let target: Vec<f64> = fraud.iter().map(|f| if *f { hi } else { lo }).collect();
    let loss = |a: f64, b: f64| -> f64 {
        raw.iter()
            .zip(&target)
            .map(|(r, t)| {
                let z = a * r + b;
                // log(1 + e^z) − t·z, computed without overflow.
                let softplus = if z > 0.0 {
                    z + (-z).exp().ln_1p()
                } else {
                    z.exp().ln_1p()
                };
                softplus - t * z
            })
            .sum()
    };
    let (mut a, mut b) = (1.0, 0.0);
    let mut current = loss(a, b);
    for _ in 0..100 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 1e-9, 0.0, 1e-9);
        for (r, t) in raw.iter().zip(&target) {
            let p = model::sigmoid(a * r + b);
            let d = p - t;
            let w = p * (1.0 - p);
            ga += d * r;
            gb += d;
            haa += w * r * r;
            hab += w * r;
            hbb += w;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-18 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let mut step = 1.0;
        let mut improved = false;
        while step > 1e-6 {
            let (na, nb) = (a - step * da, b - step * db);
            let l = loss(na, nb);
            if l < current {
                (a, b, current) = (na, nb, l);
                improved = true;
                break;
            }
            step /= 2.0;
        }
        if !improved || (da.abs() + db.abs()) < 1e-10 {
            break;
        }
    }
    Platt { a, b }
}

/// PR-AUC, ROC-AUC, recall at 0.5 % FPR and per-kind shares for scores of `idx`.
fn figures(rows: &[Row], idx: &[usize], scores: &[f64]) -> Figures {
    let labels: Vec<bool> = idx.iter().map(|&i| rows[i].fraud).collect();
    let c = curve(scores, &labels);
    let at = |threshold: f64| {
        let mut per_kind: BTreeMap<String, (bool, usize, usize)> = BTreeMap::new();
        for (k, &i) in idx.iter().enumerate() {
            let e = per_kind.entry(rows[i].kind.clone()).or_insert((rows[i].fraud, 0, 0));
            e.1 += 1;
            e.2 += usize::from(scores[k] >= threshold);
        }
        per_kind
    };
    let pos = labels.iter().filter(|l| **l).count();
    let neg = labels.len() - pos;
    let flagged = |t: f64, want: bool| {
        labels
            .iter()
            .zip(scores)
            .filter(|(l, s)| **l == want && **s >= t)
            .count()
    };
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Figures {
        rows: idx.len(),
        fraud: pos,
        pr_auc: round(c.pr_auc),
        roc_auc: round(c.roc_auc),
        recall_at_fpr_0_5pct: round(c.recall_at_target),
        threshold_at_fpr_0_5pct: round(c.threshold_at_target),
        recall_at_0_5: round(ratio(flagged(0.5, true), pos)),
        fpr_at_0_5: round(ratio(flagged(0.5, false), neg)),
        brier: round(
            labels
                .iter()
                .zip(scores)
                .map(|(l, s)| (s - f64::from(u8::from(*l))).powi(2))
                .sum::<f64>()
                / labels.len().max(1) as f64,
        ),
        per_kind: at(c.threshold_at_target)
            .into_iter()
            .map(|(k, (fraud, n, f))| {
                (
                    k,
                    KindFigures {
                        fraud,
                        rows: n,
                        flagged: round(ratio(f, n)),
                    },
                )
            })
            .collect(),
    }
}

/// Six decimals: enough for the figures, and stable text in the model file.
fn round(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// The ranking figures of scores against labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Curve {
    pub pr_auc: f64,
    pub roc_auc: f64,
    pub recall_at_target: f64,
    pub threshold_at_target: f64,
}

/// Walks the scores from high to low, one group of tied scores at a time (a threshold
/// cannot split a tie): average precision, the ROC area by trapezoids, and the best
/// recall whose false-positive rate stays within `TARGET_FPR`.
pub fn curve(scores: &[f64], labels: &[bool]) -> Curve {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pos = labels.iter().filter(|l| **l).count() as f64;
    let neg = labels.len() as f64 - pos;
    let (mut tp, mut fp) = (0.0, 0.0);
    let (mut pr_auc, mut roc_auc, mut prev_fpr, mut prev_tpr) = (0.0, 0.0, 0.0, 0.0);
    let (mut recall_at, mut threshold_at) = (0.0, f64::INFINITY);
    let mut k = 0;
    while k < order.len() {
        let s = scores[order[k]];
        let (mut gtp, mut gfp) = (0.0, 0.0);
        while k < order.len() && scores[order[k]] == s {
            if labels[order[k]] {
                gtp += 1.0;
            } else {
                gfp += 1.0;
            }
            k += 1;
        }
        tp += gtp;
        fp += gfp;
        let tpr = if pos > 0.0 { tp / pos } else { 0.0 };
        let fpr = if neg > 0.0 { fp / neg } else { 0.0 };
        pr_auc += (tpr - prev_tpr) * (tp / (tp + fp));
        roc_auc += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        if fpr <= TARGET_FPR && tpr >= recall_at {
            recall_at = tpr;
            threshold_at = s;
        }
        prev_fpr = fpr;
        prev_tpr = tpr;
    }
    Curve {
        pr_auc,
        roc_auc,
        recall_at_target: recall_at,
        threshold_at_target: if threshold_at.is_finite() { threshold_at } else { 1.0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_figures_by_hand() {
        // Perfect ranking.
        let c = curve(&[0.9, 0.8, 0.2, 0.1], &[true, true, false, false]);
        assert_eq!((c.pr_auc, c.roc_auc, c.recall_at_target), (1.0, 1.0, 1.0));
        assert_eq!(c.threshold_at_target, 0.8);
        // Reversed ranking.
        let c = curve(&[0.1, 0.2, 0.8, 0.9], &[true, true, false, false]);
        assert_eq!(c.roc_auc, 0.0);
        assert_eq!(c.recall_at_target, 0.0);
        // All tied: ROC 0.5, average precision = the base rate.
        let c = curve(&[0.5; 4], &[true, false, false, false]);
        assert_eq!(c.roc_auc, 0.5);
        assert_eq!(c.pr_auc, 0.25);
        // One legit request above a fraud one: 1 of 2 legit is a 50 % FPR.
        let c = curve(&[0.9, 0.8, 0.7], &[true, false, true]);
        assert_eq!(c.recall_at_target, 0.5);
        assert!((c.pr_auc - (0.5 * 1.0 + 0.5 * (2.0 / 3.0))).abs() < 1e-12);
        assert_eq!(c.roc_auc, 0.5);
    }

    #[test]
    fn platt_scaling_is_monotone_and_fits_the_base_rate() {
        let raw: Vec<f64> = (0..200).map(|i| f64::from(i) / 20.0 - 5.0).collect();
        let fraud: Vec<bool> = (0..200).map(|i| i >= 150 || i % 10 == 0).collect();
        let p = fit_platt(&raw, &fraud);
        assert!(p.a > 0.0, "{p:?}");
        let mean: f64 = raw.iter().map(|r| p.apply(*r)).sum::<f64>() / raw.len() as f64;
        let rate = fraud.iter().filter(|f| **f).count() as f64 / fraud.len() as f64;
        assert!((mean - rate).abs() < 0.02, "{mean} vs {rate}");
        assert_eq!(fit_platt(&raw, &fraud), p, "deterministic");
    }

    fn row(fraud: bool, actor: &str) -> Row {
        Row {
            features: Features::default(),
            fraud,
            kind: "k".into(),
            actor: Some(actor.into()),
            id: String::new(),
        }
    }

    #[test]
    fn actors_seen_in_training_stay_out_of_evaluation() {
        let mut rows: Vec<Row> = (0..70).map(|i| row(i % 7 == 0, &format!("a{}", i % 10))).collect();
        rows.extend((0..30).map(|i| row(i % 3 == 0, &format!("a{}", i % 20))));
        let s = split(&rows, 0.7);
        assert_eq!(s.train.len(), 70);
        let train: HashSet<_> = s.train.iter().map(|&i| rows[i].actor.clone()).collect();
        for &i in s.calibration.iter().chain(&s.test) {
            assert!(!train.contains(&rows[i].actor), "{:?}", rows[i].actor);
        }
        assert_eq!(s.calibration.len() + s.test.len() + s.excluded, 30);
        assert_eq!(s.excluded, 20, "a0-a9 appear twice after the split");
        // One actor never lands on both evaluation sides.
        let cal: HashSet<_> = s.calibration.iter().map(|&i| rows[i].actor.clone()).collect();
        assert!(s.test.iter().all(|&i| !cal.contains(&rows[i].actor)));
    }

    #[test]
    fn subsampling_keeps_fraud_first_and_is_deterministic() {
        let rows: Vec<Row> = (0..1000).map(|i| row(i % 50 == 0, "a")).collect();
        let idx: Vec<usize> = (0..1000).collect();
        let s = subsample(&rows, &idx, 100, 7);
        assert_eq!(s.len(), 100);
        assert_eq!(s.iter().filter(|&&i| rows[i].fraud).count(), 20);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subsample(&rows, &idx, 100, 7), s);
        assert_ne!(subsample(&rows, &idx, 100, 8), s);
    }
}
