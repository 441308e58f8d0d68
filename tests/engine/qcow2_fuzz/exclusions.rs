//! Failure classes known while their fixes are under way. A failure is excluded when its case
//! is in the class (`case`) and the failure is the class's (`failure`); it is then counted and
//! named in the summary instead of failing the test. `BLOCKFAULT_QCOW2_FUZZ_ALL=1` turns them
//! all off; `BLOCKFAULT_QCOW2_FUZZ_ONLY=NAME` runs only the cases of one class with its
//! exclusion off (to see whether it is fixed). Each entry says what it waits for (an issue item
//! or a finding in the findings list); delete it when that lands.

use super::case::Case;
use super::check::Failure;

pub struct Exclusion {
    pub name: &'static str,
    pub waits_for: &'static str,
    /// the cases in which the class can show
    pub case: fn(&Case) -> bool,
    /// the class's failures
    pub failure: fn(&Failure) -> bool,
}

pub const EXCLUSIONS: &[Exclusion] = &[];

/// The exclusion (other than `except`) that covers `f` in `case`, if any.
pub fn covering(case: &Case, f: &Failure, except: Option<&str>) -> Option<&'static Exclusion> {
    EXCLUSIONS
        .iter()
        .filter(|e| Some(e.name) != except)
        .find(|e| (e.case)(case) && (e.failure)(f))
}

pub fn named(name: &str) -> Option<&'static Exclusion> {
    EXCLUSIONS.iter().find(|e| e.name == name)
}
