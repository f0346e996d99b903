//! The tests that need the test bed (`e2e/cluster up`: the control plane, the simulated nodes and
//! the real node, the bed's registries and its tools): one test target, not run by `cargo test`
//! (its manifest entry says `test = false`), run by `e2e/test` one module at a time (each module's
//! cluster-wide objects, such as a chart release, leave with its process; see e2e/test).
//! Tests that need only the bed's tools (cosign, notation, oras, olareg, the TSA, sigstoretest, the
//! Python oracles), not its cluster, are here too: a fresh clone has none of them. Everything that
//! needs neither is a test file of its own under tests/ or a unit test.

#[path = "../support/mod.rs"]
mod support;

mod archive_contents_on_nodes;
mod cache;
mod chart;
mod contents_oracles;
mod contents_policy;
mod crds;
mod deployment_controller;
mod hostile;
mod hostile_consequences;
mod idle;
mod image;
mod inspect;
mod jobs_on_nodes;
mod mirrors;
mod model_caches;
mod model_controller;
mod model_signing_on_nodes;
mod policy;
mod pull;
mod pull_ranges;
mod real_node;
mod registries;
mod runtime;
mod status_reasons;
mod trust_and_bounds;
mod trust_archives;
mod trust_published;
mod verify_cosign;
mod verify_keyless;
mod verify_keyless_model;
mod verify_model_signing;
mod verify_notation;
mod verify_notation_timestamp;
mod workloads;
