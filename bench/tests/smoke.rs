#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CI smoke run of `scripts/bench`: every phase for celeriac, Python
//! prefork and rusty-celery with a few hundred tasks each (plus celeriac at `-c 2` and its transport alone), so the harness
//! keeps working. No timing is asserted; only that every measurement was
//! taken (the Python peer is skipped when the virtualenv is missing and peers
//! are not required).

use std::path::PathBuf;

use celeriac_bench::{Peer, Plan};

#[test]
fn every_phase_runs_for_every_peer() {
    let Some(redis) = celeriac_tests::redis() else { return };
    drop(redis); // the bench starts its own; this only checks redis-server is there
    let logs = tempfile::tempdir().unwrap();
    let mut plan = Plan::smoke(
        PathBuf::from(env!("CARGO_BIN_EXE_bench-worker")),
        PathBuf::from(env!("CARGO_BIN_EXE_rusty-worker")),
    );
    plan.log_dir = logs.path().to_path_buf();
    if plan.python.is_none() {
        celeriac_tests::python_peer(); // fails the test when peers are required
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(celeriac_bench::run(&plan)).unwrap();
    assert!(report.failures().is_empty(), "failed measurements: {:#?}", report.failures());
    for peer in [Peer::Celeriac, Peer::Rusty] {
        assert!(report.drain[&peer].is_ok());
        assert!(report.latency[&peer].is_ok());
        assert!(report.memory[&peer].is_ok());
    }
    assert!(report.drain_results[&Peer::Celeriac].is_ok());
    let markdown = report.markdown();
    assert!(markdown.contains("| drain 500 no-op tasks"), "{markdown}");
    assert!(markdown.contains("| celeriac transport only |"), "{markdown}");
    assert!(markdown.contains("| target | issue | measured | met |"), "{markdown}");
    assert!(markdown.contains(" --runtime-threads 1`"), "{markdown}");
    assert!(markdown.contains("a bare `BRPOP` client that records nothing, the floor"), "{markdown}");
    let json = report.json();
    assert_eq!(json["drain"]["celeriac"]["tasks"], 500);
    assert!(json["drain_transport_only"]["tasks_per_second"].as_f64().unwrap() > 0.0);
    assert!(json["drain_celeriac_narrow"]["drain"]["tasks_per_second"].as_f64().unwrap() > 0.0);
    assert!(json["drain_celeriac_default_runtime"]["tasks_per_second"].as_f64().unwrap() > 0.0);
    for floor in ["latency_transport_only", "latency_bare_brpop"] {
        assert!(json[floor]["start_p50_ms"].as_f64().unwrap() > 0.0, "{floor}: {}", json[floor]);
    }
    assert!(json["memory"]["celeriac"]["idle_rss_kib"].as_u64().unwrap() > 0);
    let doc = celeriac_bench::report::splice("# Benchmarks\n\nnotes\n", &markdown);
    assert_eq!(
        celeriac_bench::report::splice(&doc, "x\n"),
        celeriac_bench::report::splice("# Benchmarks\n\nnotes\n", "x\n")
    );
}
