//! Model inference per request: the shipped model's compact form (score, and the
//! explanation flagged requests pay for, in two walks and in the request path's one)
//! against smartcore's own predict on a one-row DenseMatrix, on real feature vectors
//! from simulated traffic.
//!
//! Run: `cargo bench --bench model`

use std::path::Path;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use riskgate::features::{Features, COUNT};
use riskgate::model::Model;
use riskgate::state::memory::ready;
use riskgate::state::{KeyHasher, MemoryState};
use riskgate::{pipeline, runtime, simulate};
use smartcore::ensemble::random_forest_classifier::{RandomForestClassifier, RandomForestClassifierParameters};
use smartcore::linalg::basic::matrix::DenseMatrix;

fn bench(c: &mut Criterion) {
    let model = Model::load(Path::new("models/riskgate-default.model.json")).unwrap();
    let hasher = KeyHasher::seeded(1);
    let rt = runtime::load_config(Path::new("config/riskgate.toml"), &hasher).unwrap();
    let state = MemoryState::new(256 << 20, 90_000_000);
    // The default scenario (another seed than the shipped model's): enough rows for a
    // smartcore forest the size of the shipped one.
    let scenario = simulate::Scenario::load("default").unwrap();
    let mut rows: Vec<(Features, u32)> = Vec::new();
    let events = simulate::generate(&scenario, 11, 1_762_819_200_000);
    for e in &events {
        let Some(a) = ready(pipeline::assess(&rt, &state, &hasher, e)) else {
            continue;
        };
        if let (Some(f), Some(l)) = (a.features, e.label.as_ref()) {
            if rt.routes[a.route].scored {
                rows.push((f, u32::from(l.fraud)));
            }
        }
    }
    eprintln!("{} feature vectors; model {} {}", rows.len(), model.kind, model.id);

    let mut g = c.benchmark_group("model");
    let mut n = 0usize;
    g.bench_function(format!("score ({}, compact)", model.kind), |b| {
        b.iter(|| {
            n = (n + 1) % rows.len();
            black_box(model.score(&rows[n].0))
        })
    });
    g.bench_function("score + top 3 features (score, then top_features)", |b| {
        b.iter(|| {
            n = (n + 1) % rows.len();
            let f = &rows[n].0;
            black_box((model.score(f), model.top_features(f, 3)))
        })
    });
    g.bench_function("score_explained + top 3 (the request path, a flagged request)", |b| {
        b.iter(|| {
            n = (n + 1) % rows.len();
            black_box(model.score_explained(&rows[n].0, 3, |_| true))
        })
    });
    g.bench_function("explain + top 3 features (one walk)", |b| {
        b.iter(|| {
            n = (n + 1) % rows.len();
            let e = model.explain(&rows[n].0);
            black_box((e.score, e.top(3)))
        })
    });

    // smartcore's forest with the training defaults (40 trees, depth 12, on ~70k rows
    // like the shipped model's 60k), predicting one row at a time as the request path
    // would have to.
    let values: Vec<f64> = rows.iter().flat_map(|(f, _)| f.as_slice().iter().copied()).collect();
    let x = DenseMatrix::new(rows.len(), COUNT, values, false).unwrap();
    let y: Vec<u32> = rows.iter().map(|(_, l)| *l).collect();
    let params = RandomForestClassifierParameters::default()
        .with_n_trees(40)
        .with_max_depth(12)
        .with_min_samples_leaf(3)
        .with_seed(1);
    let rf: RandomForestClassifier<f64, u32, DenseMatrix<f64>, Vec<u32>> =
        RandomForestClassifier::fit(&x, &y, params).unwrap();
    g.bench_function(
        "smartcore RandomForestClassifier::predict (1-row DenseMatrix, 40 trees)",
        |b| {
            b.iter(|| {
                n = (n + 1) % rows.len();
                let row = DenseMatrix::new(1, COUNT, rows[n].0.as_slice().to_vec(), false).unwrap();
                black_box(rf.predict(&row).unwrap())
            })
        },
    );

    // The whole scoring path with and without the model, on the state the simulated
    // day left behind (the same events again, a day later).
    let with_model = runtime::load(Path::new("config/riskgate.toml"), &hasher).unwrap();
    assert!(with_model.model.as_ref().is_some_and(|m| m.loaded.is_some()));
    let mut rules_only = runtime::load(Path::new("config/riskgate.toml"), &hasher).unwrap();
    for r in &mut rules_only.routes {
        r.model = riskgate::config::ModelMode::Off;
    }
    let later: Vec<_> = events
        .iter()
        .filter(|e| e.method == "POST")
        .map(|e| {
            let mut e = e.clone();
            e.ts_ms += 86_400_000;
            e
        })
        .collect();
    for (name, rt) in [("rules only", &rules_only), ("rules + model", &with_model)] {
        g.bench_function(format!("pipeline::assess, {name}"), |b| {
            b.iter(|| {
                n = (n + 1) % later.len();
                black_box(ready(pipeline::assess(rt, &state, &hasher, &later[n])))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
