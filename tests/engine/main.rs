//! The integration tests of the engine, the CLI and scenario parsing, in one binary: each test
//! binary links the whole crate on its own, so one binary instead of eleven keeps `cargo test` short.

mod img_qcow2;
mod parsers_prop;
mod qcow2_check_agreement;
mod qcow2_events;
mod qcow2_fuzz;
mod qcow2_hostile;
mod qcow2_interop;
mod qcow2_leaks;
mod qcow2_random;
mod qcow2_resize;
mod runner_cli;
mod scenario_yaml_prop;
mod support;

// The runner's scenario reader, compiled in as it is into the binary (its module paths are
// crate-rooted); the property test drives it.
#[allow(dead_code)]
#[path = "../../runner/matrix.rs"]
mod matrix;
#[allow(dead_code)]
#[path = "../../runner/scenario.rs"]
mod scenario;
#[allow(dead_code)]
#[path = "../../runner/sweep_spec.rs"]
mod sweep_spec;
