//! Model: the trained classifier as the request path runs it — the model file format,
//! loading (checked against the compiled feature list), calibrated scoring and the
//! per-feature contributions behind `model:FEATURE` reasons.
//!
//! `train` fits smartcore models offline and writes them here in a compact form of our
//! own (flat trees, or standardized coefficients), so that serving allocates nothing,
//! never depends on smartcore's internal layout, and costs about a microsecond.

use std::path::Path;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::features::{self, Feature, Features, COUNT, FEATURE_SET_VERSION};

/// The model file's `format` value; bumped when the layout below changes.
pub const FORMAT: &str = "riskgate-model/1";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("model file {path} is not a riskgate model: {message}")]
    Parse { path: String, message: String },
    #[error("model file {path} was trained on feature set {model} but this build computes {compiled}{detail}; retrain it (models/README.md)")]
    FeatureMismatch {
        path: String,
        model: String,
        compiled: String,
        detail: String,
    },
    #[error("model file {path} is inconsistent: {message}")]
    Invalid { path: String, message: String },
}

/// The model file as written by `riskgate train` (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub format: String,
    pub feature_set_version: String,
    /// Feature names in the order the classifier's indices refer to.
    pub features: Vec<String>,
    pub classifier: Classifier,
    /// Maps the classifier's raw log-odds to a probability of fraud in [0, 1].
    pub calibration: Platt,
    /// What it was trained on and how it did; informational, never read when scoring.
    pub training: serde_json::Value,
    pub evaluation: serde_json::Value,
}

/// The classifier in the compact form serving runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Classifier {
    /// Log-odds = intercept + Σ coef × (t(x) − mean) / scale, with t(x) = sign(x)·ln(1 + |x|).
    LogisticRegression {
        mean: Vec<f64>,
        scale: Vec<f64>,
        coef: Vec<f64>,
        intercept: f64,
    },
    /// The mean over trees of the fraud share of the leaf a request falls in.
    RandomForest { trees: Vec<Tree> },
}

/// One tree as parallel arrays, node 0 the root. A node with `left == 0` is a leaf
/// (the root is nobody's child). A request goes left when `x <= threshold`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    pub feature: Vec<u16>,
    pub threshold: Vec<f64>,
    pub left: Vec<u32>,
    pub right: Vec<u32>,
    /// Fraud share of the training rows that reached the node (leaves and inner nodes:
    /// inner values give the per-feature path contributions).
    pub value: Vec<f64>,
}

/// Platt scaling: p = 1 / (1 + exp(−(a · raw + b))).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platt {
    pub a: f64,
    pub b: f64,
}

impl Platt {
    pub fn apply(&self, raw: f64) -> f64 {
        sigmoid(self.a * raw + self.b)
    }
}

pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `ln(1 + k)` for the whole numbers most features are (counts, flags): `ln_1p` costs
/// about forty instructions, and the regression squashes every feature up to three
/// times a request. The same values `ln_1p` gives, so scores do not change.
static LN_1P_SMALL: LazyLock<[f64; 256]> = LazyLock::new(|| std::array::from_fn(|k| (k as f64).ln_1p()));

/// The feature transform of the logistic regression: counts span orders of magnitude.
pub fn squash(x: f64) -> f64 {
    squash_with(&LN_1P_SMALL, x)
}

/// `squash` with the table already at hand (a loop over the features fetches it once).
fn squash_with(table: &[f64; 256], x: f64) -> f64 {
    // A whole number below 256 (and not -0.0, which squashes to -0.0): two conversions
    // tell, where `fract` is a call into libm.
    let k = x as u8;
    if f64::from(k) == x && x.is_sign_positive() {
        table[usize::from(k)]
    } else if x.is_finite() {
        x.signum() * x.abs().ln_1p()
    } else {
        0.0
    }
}

/// Forest shares are kept off 0 and 1 so their log-odds stay finite.
const SHARE_EPS: f64 = 1e-4;

pub fn logit(p: f64) -> f64 {
    let p = p.clamp(SHARE_EPS, 1.0 - SHARE_EPS);
    (p / (1.0 - p)).ln()
}

/// A flat tree node, laid out for the walk: 16 bytes and 16-aligned, so that a node
/// never straddles two cache lines and a line holds four. What only a leaf needs is
/// in [`Leaf`], out of the walk's way.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(16))]
struct Node {
    threshold: f64,
    /// The left child within the forest's node array; the right child is `left + 1`.
    /// A leaf is its own left child, so that a walk of fixed depth stays on it.
    left: u32,
    /// The split feature; for a leaf, `COUNT`: the walk's padding slot, always 0.0,
    /// which a leaf's threshold of +inf sends left.
    feature: u16,
}

const _: () = assert!(std::mem::size_of::<Node>() == 16);

/// What the score and the explanation read of the leaf a walk ends on (an inner
/// node's entry stays the default: no walk ends there).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Leaf {
    value: f32,
    /// How many steps the leaf's path has in `Forest::paths`.
    steps: u16,
    /// Where the leaf's path starts in `Forest::paths`.
    path: u32,
}

/// A node as the model file gives it (children by index, 0 for none), before
/// `Forest::compile` lays the trees out for the walk.
#[derive(Debug, Clone, Copy)]
struct FileNode {
    threshold: f64,
    value: f32,
    feature: u16,
    left: u32,
    right: u32,
}

/// One feature's share of a leaf's path: the change in fraud share at the splits on
/// `feature` between the root and the leaf, summed in path order.
#[derive(Debug, Clone, Copy, PartialEq)]
struct PathStep {
    delta: f64,
    feature: u16,
}

#[derive(Debug, Clone, PartialEq)]
enum Compiled {
    Linear(Box<Linear>),
    Forest(Box<Forest>),
}

/// The trees in one node array, and for each leaf the path contributions it stands
/// for: a leaf's path is fixed, so its explanation is worked out once, at load.
#[derive(Debug, Clone, PartialEq)]
struct Forest {
    nodes: Vec<Node>,
    /// Parallel to `nodes`.
    leaf: Vec<Leaf>,
    roots: Vec<u32>,
    paths: Vec<PathStep>,
    /// The deepest leaf's depth: every walk takes this many steps.
    depth: usize,
}

/// A logistic regression with the standardization folded in: log-odds =
/// `bias + Σ weight × t(x)`, and a feature's contribution `weight × (t(x) − mean)`.
#[derive(Debug, Clone, PartialEq)]
struct Linear {
    /// In compiled feature order: coef / scale.
    weight: [f64; COUNT],
    mean: [f64; COUNT],
    /// intercept − Σ weight × mean.
    bias: f64,
}

impl Linear {
    /// Every feature squashed once, and the log-odds from them: what the score, the
    /// contributions and the reasons all read, so they agree to the bit.
    fn terms(&self, x: &[f64]) -> ([f64; COUNT], f64) {
        let table = &*LN_1P_SMALL;
        let mut t = [0.0; COUNT];
        let mut sum = 0.0;
        for ((t, w), v) in t.iter_mut().zip(&self.weight).zip(x) {
            *t = squash_with(table, *v);
            sum += w * *t;
        }
        (t, self.bias + sum)
    }

    /// Feature `i`'s contribution, from its squashed value `t`.
    fn contribution(&self, i: usize, t: f64) -> f64 {
        self.weight[i] * (t - self.mean[i])
    }

    /// Every feature's contribution, from the squashed values `terms` gave.
    fn contributions(&self, t: &[f64; COUNT]) -> [f64; COUNT] {
        std::array::from_fn(|i| self.contribution(i, t[i]))
    }
}

/// A loaded model, ready for the request path.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    compiled: Compiled,
    calibration: Platt,
    /// A short content hash of the file, to tell models apart in logs.
    pub id: String,
    pub kind: &'static str,
    pub feature_set_version: String,
}

impl Model {
    /// Reads and checks a model file. Synchronous file I/O: call it from a blocking task.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Model::from_json(&text, &path.display().to_string())
    }

    /// Parses and checks model JSON; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<Model, ModelError> {
        let file: ModelFile = serde_json::from_str(text).map_err(|e| ModelError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut model = Model::from_file(&file, origin)?;
        model.id = format!("{:016x}", fnv1a(text.as_bytes()));
        Ok(model)
    }

    /// Checks a parsed model file against the compiled feature list and compiles it.
    pub fn from_file(file: &ModelFile, origin: &str) -> Result<Model, ModelError> {
        let invalid = |message: String| ModelError::Invalid {
            path: origin.to_string(),
            message,
        };
        if file.format != FORMAT {
            return Err(ModelError::Parse {
                path: origin.to_string(),
                message: format!("format `{}`, expected `{FORMAT}`", file.format),
            });
        }
        let map = feature_map(&file.features, &file.feature_set_version, origin)?;
        let compiled = match &file.classifier {
            Classifier::LogisticRegression {
                mean,
                scale,
                coef,
                intercept,
            } => {
                let n = map.len();
                if mean.len() != n || scale.len() != n || coef.len() != n {
                    return Err(invalid(format!(
                        "logistic regression has {} means, {} scales, {} coefficients for {n} features",
                        mean.len(),
                        scale.len(),
                        coef.len()
                    )));
                }
                let all_finite = mean.iter().chain(scale).chain(coef).all(|v| v.is_finite()) && intercept.is_finite();
                if !all_finite || scale.iter().any(|s| *s <= 0.0) {
                    return Err(invalid("non-finite parameter or non-positive scale".into()));
                }
                let mut linear = Box::new(Linear {
                    weight: [0.0; COUNT],
                    mean: [0.0; COUNT],
                    bias: *intercept,
                });
                for (i, &to) in map.iter().enumerate() {
                    linear.weight[to] = coef[i] / scale[i];
                    linear.mean[to] = mean[i];
                    linear.bias -= linear.weight[to] * mean[i];
                }
                Compiled::Linear(linear)
            }
            Classifier::RandomForest { trees } => {
                if trees.is_empty() {
                    return Err(invalid("a forest without trees".into()));
                }
                let mut nodes = Vec::new();
                let mut roots = Vec::with_capacity(trees.len());
                for (t, tree) in trees.iter().enumerate() {
                    let n = tree.feature.len();
                    let same = [
                        tree.threshold.len(),
                        tree.left.len(),
                        tree.right.len(),
                        tree.value.len(),
                    ];
                    if n == 0 || same.iter().any(|l| *l != n) {
                        return Err(invalid(format!("tree {t}: arrays of different lengths")));
                    }
                    let base = nodes.len() as u32;
                    roots.push(base);
                    // Each node but the root has one parent: a leaf's path is its own.
                    let mut has_parent = vec![false; n];
                    for i in 0..n {
                        let (l, r) = (tree.left[i] as usize, tree.right[i] as usize);
                        let leaf = l == 0;
                        // Children come after their parent: the walk always ends.
                        if !leaf && (l <= i || r <= i || l >= n || r >= n) {
                            return Err(invalid(format!("tree {t}, node {i}: bad children {l}, {r}")));
                        }
                        if !leaf {
                            for c in [l, r] {
                                if std::mem::replace(&mut has_parent[c], true) {
                                    return Err(invalid(format!("tree {t}, node {c}: more than one parent")));
                                }
                            }
                        }
                        let f = tree.feature[i] as usize;
                        if !leaf && f >= map.len() {
                            return Err(invalid(format!("tree {t}, node {i}: feature index {f}")));
                        }
                        let v = tree.value[i];
                        if !(0.0..=1.0).contains(&v) || (!leaf && !tree.threshold[i].is_finite()) {
                            return Err(invalid(format!("tree {t}, node {i}: bad value or threshold")));
                        }
                        nodes.push(FileNode {
                            threshold: tree.threshold[i],
                            value: v as f32,
                            feature: if leaf { 0 } else { map[f] as u16 },
                            left: if leaf { 0 } else { base + l as u32 },
                            right: if leaf { 0 } else { base + r as u32 },
                        });
                    }
                }
                Compiled::Forest(Box::new(Forest::compile(&nodes, &roots)))
            }
        };
        let Platt { a, b } = file.calibration;
        if !(a.is_finite() && b.is_finite()) {
            return Err(invalid("non-finite calibration".into()));
        }
        Ok(Model {
            kind: match compiled {
                Compiled::Linear(_) => "logistic_regression",
                Compiled::Forest(_) => "random_forest",
            },
            compiled,
            calibration: file.calibration,
            id: String::new(),
            feature_set_version: file.feature_set_version.clone(),
        })
    }

    /// The classifier's log-odds before calibration.
    pub fn raw(&self, f: &Features) -> f64 {
        let x = f.as_slice();
        match &self.compiled {
            Compiled::Linear(l) => l.terms(x).1,
            Compiled::Forest(forest) => forest.log_odds(&forest.leaves(&f.0)),
        }
    }

    /// The calibrated probability of fraud, in [0, 1] (0 for a vector that is not finite).
    pub fn score(&self, f: &Features) -> f64 {
        self.calibrated(self.raw(f))
    }

    fn calibrated(&self, raw: f64) -> f64 {
        let p = self.calibration.apply(raw);
        if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// `score` and `contributions` together, from one walk over the trees (a forest's
    /// explanation follows the same paths as its prediction): the same values as the
    /// two calls, bit for bit, for the price of one (a forest adds up the tables of the
    /// leaves its walk reached).
    pub fn explain(&self, f: &Features) -> Explained {
        match &self.compiled {
            Compiled::Linear(l) => {
                let (t, z) = l.terms(f.as_slice());
                Explained {
                    score: self.calibrated(z),
                    contributions: l.contributions(&t),
                }
            }
            Compiled::Forest(forest) => {
                let leaves = forest.leaves(&f.0);
                Explained {
                    score: self.calibrated(forest.log_odds(&leaves)),
                    contributions: forest.contributions(&leaves),
                }
            }
        }
    }

    /// The calibrated score and, when `wanted(score)`, the top `k` contributing
    /// features: what the request path needs, at the least cost for each kind. A
    /// regression squashes the features once for both; a forest walks once and adds up
    /// its leaves' path tables only when wanted. The same values as `score` and `explain`.
    pub fn score_explained(&self, f: &Features, k: usize, wanted: impl FnOnce(f64) -> bool) -> (f64, Option<Top>) {
        match &self.compiled {
            Compiled::Linear(l) => {
                let (t, z) = l.terms(f.as_slice());
                let p = self.calibrated(z);
                (p, wanted(p).then(|| top_by(k, |i| l.contribution(i, t[i]))))
            }
            Compiled::Forest(forest) => {
                let leaves = forest.leaves(&f.0);
                let p = self.calibrated(forest.log_odds(&leaves));
                (p, wanted(p).then(|| top_of(&forest.contributions(&leaves), k)))
            }
        }
    }

    /// How much each feature pushed this request's score up (positive) or down, in
    /// compiled feature order. Logistic regression: coefficient × standardized value
    /// (log-odds against the training mean). Forest: path contributions, the change in
    /// fraud share at each split a request passes, summed per split feature and
    /// averaged over trees; same cost as a prediction.
    pub fn contributions(&self, f: &Features) -> [f64; COUNT] {
        let x = f.as_slice();
        match &self.compiled {
            Compiled::Linear(l) => l.contributions(&l.terms(x).0),
            Compiled::Forest(forest) => forest.contributions(&forest.leaves(&f.0)),
        }
    }

    /// The `k` features that pushed the score up most (positive contributions only),
    /// largest first; ties go to the earlier feature.
    pub fn top_features(&self, f: &Features, k: usize) -> Vec<(Feature, f64)> {
        top_of(&self.contributions(f), k).into_vec()
    }
}

/// A score with its per-feature contributions (`Model::explain`).
#[derive(Debug, Clone)]
pub struct Explained {
    /// As `Model::score`.
    pub score: f64,
    /// As `Model::contributions`.
    pub contributions: [f64; COUNT],
}

impl Explained {
    /// As `Model::top_features`, without allocating for `k` up to 10 (the config's most).
    pub fn top(&self, k: usize) -> Top {
        top_of(&self.contributions, k)
    }
}

/// The top contributing features, largest first (room for ten and the one being
/// pushed out, on the stack).
pub type Top = smallvec::SmallVec<[(Feature, f64); 11]>;

/// The `k` largest positive, finite contributions, largest first; ties go to the
/// earlier feature.
fn top_of(c: &[f64; COUNT], k: usize) -> Top {
    top_by(k, |i| c[i])
}

/// `top_of` over contributions computed on the way (`contribution(i)` for feature i).
fn top_by(k: usize, contribution: impl Fn(usize) -> f64) -> Top {
    let mut top = Top::new();
    if k == 0 {
        return top;
    }
    // What a contribution must beat to get in: 0 until k are in, then the k-th.
    let mut floor = 0.0;
    for i in 0..COUNT {
        let v = contribution(i);
        // Most contributions are no larger than the floor: skip them at once.
        if v <= floor || !v.is_finite() {
            continue;
        }
        let pos = top.iter().position(|(_, w)| v > *w).unwrap_or(top.len());
        top.insert(pos, (features::ALL[i], v));
        top.truncate(k);
        if top.len() == k {
            floor = top[k - 1].1;
        }
    }
    top
}

/// The walk's feature slots: the features, the leaves' padding slot (`COUNT`, always
/// 0.0) and zeros up to a power of two.
const FEATURE_SLOTS: usize = (COUNT + 1).next_power_of_two();

/// The leaf each tree sends a request to (room for 64 trees on the stack).
type Leaves = smallvec::SmallVec<[u32; 64]>;

impl Forest {
    /// Lays the trees of `file` (roots at `roots`) out for the walk, breadth first so
    /// that a node's children are adjacent, and works out each leaf's path
    /// contributions.
    fn compile(file: &[FileNode], roots: &[u32]) -> Forest {
        let blank = Node {
            threshold: 0.0,
            left: 0,
            feature: 0,
        };
        let mut nodes = Vec::with_capacity(file.len());
        let mut leaf = Vec::with_capacity(file.len());
        let mut paths = Vec::new();
        let mut laid_roots = Vec::with_capacity(roots.len());
        let mut depth = 0;
        for &root in roots {
            laid_roots.push(nodes.len() as u32);
            nodes.push(blank);
            leaf.push(Leaf::default());
            // (file node, its slot, the path's summed change per feature so far, depth)
            let mut queue = std::collections::VecDeque::from([(root as usize, nodes.len() - 1, Vec::new(), 0)]);
            while let Some((from, at, path, d)) = queue.pop_front() {
                let n = file[from];
                if n.left == 0 {
                    depth = usize::max(depth, d);
                    nodes[at] = Node {
                        threshold: f64::INFINITY,
                        left: at as u32,
                        feature: COUNT as u16,
                    };
                    leaf[at] = Leaf {
                        value: n.value,
                        steps: path.len() as u16,
                        path: paths.len() as u32,
                    };
                    paths.extend_from_slice(&path);
                    continue;
                }
                let left = nodes.len();
                nodes.extend([blank, blank]);
                leaf.extend([Leaf::default(), Leaf::default()]);
                nodes[at] = Node {
                    threshold: n.threshold,
                    left: left as u32,
                    feature: n.feature,
                };
                for (next, slot) in [(n.left, left), (n.right, left + 1)] {
                    let mut path: Vec<PathStep> = path.clone();
                    let delta = f64::from(file[next as usize].value) - f64::from(n.value);
                    match path.iter_mut().find(|s| s.feature == n.feature) {
                        Some(step) => step.delta += delta,
                        None => path.push(PathStep {
                            delta,
                            feature: n.feature,
                        }),
                    }
                    queue.push_back((next as usize, slot, path, d + 1));
                }
            }
        }
        // Padded to a power of two with unreachable leaves, so that the walk can index
        // by a mask and carry no bounds check (`leaves`).
        let padded_len = nodes.len().next_power_of_two();
        for at in nodes.len()..padded_len {
            nodes.push(Node {
                threshold: f64::INFINITY,
                left: at as u32,
                feature: COUNT as u16,
            });
            leaf.push(Leaf::default());
        }
        Forest {
            nodes,
            leaf,
            roots: laid_roots,
            paths,
            depth,
        }
    }

    /// The leaf each tree sends `x` to. All trees step together, level by level, and a
    /// step is a comparison added to an index: no branch depends on the features, and
    /// the trees' walks overlap instead of each waiting on its own loads.
    ///
    /// Both loads of a step are indexed through a mask (the node array's length and the
    /// feature slots are powers of two, and every index is already in range), so that
    /// the compiler drops their bounds checks: 4 of a step's 15 instructions.
    fn leaves(&self, x: &[f64; COUNT]) -> Leaves {
        let mut padded = [0.0; FEATURE_SLOTS];
        padded[..COUNT].copy_from_slice(x);
        let mask = self.nodes.len() - 1;
        // A slice of exactly `mask + 1` nodes: `i & mask` is in it, as the compiler sees.
        let nodes = &self.nodes[..=mask];
        let mut at: Leaves = self.roots.iter().copied().collect();
        for _ in 0..self.depth {
            for i in &mut at {
                let n = &nodes[*i as usize & mask];
                // Right unless `x <= threshold`: the negation is the point, NaN goes right.
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                let right = !(padded[usize::from(n.feature) & (FEATURE_SLOTS - 1)] <= n.threshold);
                *i = n.left + u32::from(right);
            }
        }
        at
    }

    /// The forest's log-odds for the leaves `x` reaches.
    fn log_odds(&self, leaves: &[u32]) -> f64 {
        let mut sum = 0.0;
        for &l in leaves {
            sum += f64::from(self.leaf[l as usize].value);
        }
        logit(sum / self.roots.len() as f64)
    }

    /// The path contributions per feature (the change in fraud share at each split
    /// passed, summed per split feature, averaged over the trees).
    fn contributions(&self, leaves: &[u32]) -> [f64; COUNT] {
        let mut out = [0.0; COUNT];
        for &l in leaves {
            let leaf = self.leaf[l as usize];
            let start = leaf.path as usize;
            for step in &self.paths[start..start + usize::from(leaf.steps)] {
                out[usize::from(step.feature)] += step.delta;
            }
        }
        let trees = self.roots.len() as f64;
        out.iter_mut().for_each(|v| *v /= trees);
        out
    }
}

/// For each of the model's features, its index in the compiled list; refuses a model
/// whose names or version differ from this build's (the meaning of a vector position
/// is only the same when both are).
fn feature_map(names: &[String], version: &str, origin: &str) -> Result<Vec<usize>, ModelError> {
    let compiled: Vec<&str> = features::ALL.iter().map(|f| f.name()).collect();
    let missing: Vec<&str> = compiled
        .iter()
        .copied()
        .filter(|c| !names.iter().any(|n| n == c))
        .collect();
    let unknown: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| !compiled.contains(n))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let duplicated: Vec<&str> = names.iter().map(String::as_str).filter(|n| !seen.insert(*n)).collect();
    if missing.is_empty() && unknown.is_empty() && duplicated.is_empty() && version == FEATURE_SET_VERSION {
        return Ok(names.iter().filter_map(|n| features::index_of(n)).collect());
    }
    let mut detail = String::new();
    let list = |v: &[&str]| {
        let mut s = v.iter().take(8).copied().collect::<Vec<_>>().join(", ");
        if v.len() > 8 {
            s.push_str(&format!(" and {} more", v.len() - 8));
        }
        s
    };
    if !unknown.is_empty() {
        detail.push_str(&format!(
            "; the model reads features this build lacks: {}",
            list(&unknown)
        ));
    }
    if !missing.is_empty() {
        detail.push_str(&format!(
            "; this build has features the model lacks: {}",
            list(&missing)
        ));
    }
    if !duplicated.is_empty() {
        detail.push_str(&format!("; features listed twice: {}", list(&duplicated)));
    }
    Err(ModelError::FeatureMismatch {
        path: origin.to_string(),
        model: version.to_string(),
        compiled: FEATURE_SET_VERSION.to_string(),
        detail,
    })
}

/// FNV-1a: a stable content hash (no dependency, not a secret).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        features::ALL.iter().map(|f| f.name().to_string()).collect()
    }

    /// A one-tree forest: users_per_device_24h > 3 → 0.9, else 0.1.
    pub(crate) fn stump() -> ModelFile {
        let f = Feature::UsersPerDevice24h as u16;
        ModelFile {
            format: FORMAT.into(),
            feature_set_version: FEATURE_SET_VERSION.into(),
            features: names(),
            classifier: Classifier::RandomForest {
                trees: vec![Tree {
                    feature: vec![f, 0, 0],
                    threshold: vec![3.0, 0.0, 0.0],
                    left: vec![1, 0, 0],
                    right: vec![2, 0, 0],
                    value: vec![0.3, 0.1, 0.9],
                }],
            },
            calibration: Platt { a: 1.0, b: 0.0 },
            training: serde_json::Value::Null,
            evaluation: serde_json::Value::Null,
        }
    }

    fn with(f: Feature, v: f64) -> Features {
        let mut x = Features::default();
        x.set(f, v);
        x
    }

    #[test]
    fn a_forest_scores_and_explains_by_its_splits() {
        let m = Model::from_file(&stump(), "t").unwrap();
        let farm = with(Feature::UsersPerDevice24h, 8.0);
        assert!((m.score(&farm) - 0.9).abs() < 1e-6);
        assert!((m.score(&Features::default()) - 0.1).abs() < 1e-6);
        let c = m.contributions(&farm);
        assert!((c[Feature::UsersPerDevice24h as usize] - 0.6).abs() < 1e-6);
        let top = m.top_features(&farm, 3);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0, Feature::UsersPerDevice24h);
        assert!(m.top_features(&Features::default(), 3).is_empty());
    }

    #[test]
    fn explain_is_score_and_contributions_in_one_walk() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/riskgate-default.model.json");
        let shipped = Model::load(&path).unwrap();
        let stump = Model::from_file(&stump(), "t").unwrap();
        for m in [&shipped, &stump] {
            for i in 0..200u32 {
                let mut f = Features::default();
                for (j, v) in f.0.iter_mut().enumerate() {
                    // A spread of counts, ages and flags, varied per vector.
                    let h = (i as usize * 31 + j * 17) % 97;
                    *v = if h % 3 == 0 { 0.0 } else { (h * h) as f64 / 7.0 };
                }
                let e = m.explain(&f);
                assert_eq!(e.score.to_bits(), m.score(&f).to_bits());
                assert_eq!(e.contributions.map(f64::to_bits), m.contributions(&f).map(f64::to_bits));
                assert_eq!(e.top(3).into_vec(), m.top_features(&f, 3));
                let (p, top) = m.score_explained(&f, 3, |p| p >= 0.5);
                assert_eq!(p.to_bits(), e.score.to_bits());
                assert_eq!(top.map(Top::into_vec), (p >= 0.5).then(|| m.top_features(&f, 3)));
            }
        }
    }

    /// The compiled forest (children adjacent, every tree walked to a fixed depth, each
    /// leaf's explanation worked out at load) scores and explains as a walk of the
    /// file's own trees does: the mean leaf share, and the change in fraud share at
    /// every split passed, summed per feature, averaged over the trees.
    #[test]
    fn the_compiled_forest_is_the_files_trees() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/riskgate-default.model.json");
        let m = Model::load(&path).unwrap();
        let file: ModelFile = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let map = feature_map(&file.features, &file.feature_set_version, "test").unwrap();
        let Classifier::RandomForest { trees } = &file.classifier else {
            panic!("the shipped model is a forest")
        };
        let share = |tree: &Tree, i: usize| f64::from(tree.value[i] as f32);
        let mut explained = 0;
        for i in 0..500u32 {
            let mut f = Features::default();
            for (j, v) in f.0.iter_mut().enumerate() {
                let h = (i as usize * 13 + j * 29) % 89;
                *v = if h % 4 == 0 { 0.0 } else { (h * h) as f64 / 5.0 };
            }
            if i % 50 == 7 {
                f.0[(i as usize) % COUNT] = f64::NAN;
            }
            let x = f.as_slice();
            let mut walked = [0.0; COUNT];
            let mut leaf_shares = 0.0;
            for tree in trees {
                let mut i = 0;
                while tree.left[i] != 0 {
                    let feature = map[tree.feature[i] as usize];
                    let next = if x[feature] <= tree.threshold[i] {
                        tree.left[i]
                    } else {
                        tree.right[i]
                    } as usize;
                    walked[feature] += share(tree, next) - share(tree, i);
                    i = next;
                }
                leaf_shares += share(tree, i);
            }
            let n = trees.len() as f64;
            assert_eq!(m.raw(&f).to_bits(), logit(leaf_shares / n).to_bits());
            let from_leaves = m.contributions(&f);
            for (w, l) in walked.iter().zip(from_leaves) {
                assert!((w / n - l).abs() < 1e-12, "{w} vs {l}");
            }
            explained += usize::from(from_leaves.iter().any(|c| *c != 0.0));
        }
        assert!(explained > 400, "{explained}");
    }

    #[test]
    fn squash_is_the_signed_log_with_or_without_its_table() {
        let exact = |x: f64| x.signum() * x.abs().ln_1p();
        for k in 0..300 {
            let x = f64::from(k);
            assert_eq!(squash(x).to_bits(), exact(x).to_bits(), "{x}");
            assert_eq!(squash(x + 0.5).to_bits(), exact(x + 0.5).to_bits(), "{x}.5");
            assert_eq!(squash(-x).to_bits(), exact(-x).to_bits(), "-{x}");
        }
        assert_eq!(squash(f64::NAN), 0.0);
        assert_eq!(squash(f64::INFINITY), 0.0);
    }

    #[test]
    fn a_logistic_regression_explains_by_standardized_terms() {
        let n = COUNT;
        let mut coef = vec![0.0; n];
        coef[Feature::HasDevice as usize] = -2.0;
        coef[Feature::UsersPerPhone24h as usize] = 1.5;
        let mut file = stump();
        file.classifier = Classifier::LogisticRegression {
            mean: vec![0.0; n],
            scale: vec![1.0; n],
            coef,
            intercept: -3.0,
        };
        let m = Model::from_file(&file, "t").unwrap();
        let mut x = with(Feature::UsersPerPhone24h, 5.0);
        assert!((m.raw(&x) - (-3.0 + 1.5 * 6f64.ln())).abs() < 1e-9);
        x.set(Feature::HasDevice, 1.0);
        let top = m.top_features(&x, 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [Feature::UsersPerPhone24h]);
        assert!(m.score(&x) < m.score(&with(Feature::UsersPerPhone24h, 5.0)));
    }

    #[test]
    fn a_reordered_feature_list_is_remapped() {
        let mut file = stump();
        file.features.swap(0, Feature::UsersPerDevice24h as usize);
        if let Classifier::RandomForest { trees } = &mut file.classifier {
            trees[0].feature[0] = 0;
        }
        let m = Model::from_file(&file, "t").unwrap();
        assert!((m.score(&with(Feature::UsersPerDevice24h, 8.0)) - 0.9).abs() < 1e-6);
    }

    #[test]
    fn a_mismatched_feature_list_is_refused_with_the_difference() {
        let mut file = stump();
        file.features[3] = "device_reqs_1w".into();
        let err = Model::from_file(&file, "m.json").unwrap_err().to_string();
        assert!(err.contains("lacks: device_reqs_1w"), "{err}");
        assert!(
            err.contains(&format!("the model lacks: {}", features::ALL[3].name())),
            "{err}"
        );
        let mut file = stump();
        let last = file.features.pop().unwrap();
        let err = Model::from_file(&file, "m.json").unwrap_err().to_string();
        assert!(err.contains(&format!("the model lacks: {last}")), "{err}");
        let mut file = stump();
        file.feature_set_version = "rg-features-0".into();
        let err = Model::from_file(&file, "m.json").unwrap_err().to_string();
        assert!(err.contains("trained on feature set rg-features-0"), "{err}");
    }

    #[test]
    fn corrupt_files_are_refused() {
        assert!(matches!(Model::from_json("{", "m"), Err(ModelError::Parse { .. })));
        let mut file = stump();
        if let Classifier::RandomForest { trees } = &mut file.classifier {
            trees[0].left[0] = 0xffff;
        }
        assert!(matches!(Model::from_file(&file, "m"), Err(ModelError::Invalid { .. })));
        let mut file = stump();
        if let Classifier::RandomForest { trees } = &mut file.classifier {
            trees[0].left[1] = 0;
            trees[0].left[0] = 0;
            trees[0].value[0] = 1.5;
        }
        assert!(matches!(Model::from_file(&file, "m"), Err(ModelError::Invalid { .. })));
        // A node with two parents would make a leaf's path ambiguous.
        let mut file = stump();
        if let Classifier::RandomForest { trees } = &mut file.classifier {
            let f = Feature::UsersPerDevice24h as u16;
            trees[0] = Tree {
                feature: vec![f, f, f, 0, 0],
                threshold: vec![3.0, 1.0, 5.0, 0.0, 0.0],
                left: vec![1, 3, 3, 0, 0],
                right: vec![2, 4, 4, 0, 0],
                value: vec![0.3, 0.2, 0.5, 0.1, 0.9],
            };
        }
        let refused = Model::from_file(&file, "m").unwrap_err().to_string();
        assert!(refused.contains("node 3: more than one parent"), "{refused}");
        let text = serde_json::to_string(&stump()).unwrap();
        let m = Model::from_json(&text, "m").unwrap();
        assert_eq!(m.id.len(), 16);
        assert_eq!(m.kind, "random_forest");
    }
}
