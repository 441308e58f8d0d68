//! Failure classes known while their fixes are under way. A failure is excluded when its case
//! is in the class (`case`) and the failure is the class's (`failure`); it is then counted and
//! named in the summary instead of failing the test. `BLOCKFAULT_QCOW2_FUZZ_ALL=1` turns them
//! all off; `BLOCKFAULT_QCOW2_FUZZ_ONLY=NAME` runs only the cases of one class with its
//! exclusion off (to see whether it is fixed). Each entry says what it waits for (an issue item
//! or a finding in the findings list); delete it when that lands.

use super::case::Case;
use super::check::{Failure, Kind};

pub struct Exclusion {
    pub name: &'static str,
    pub waits_for: &'static str,
    /// the cases in which the class can show
    pub case: fn(&Case) -> bool,
    /// the class's failures
    pub failure: fn(&Failure) -> bool,
}

pub const EXCLUSIONS: &[Exclusion] = &[Exclusion {
    name: "repair with the refcount table over another table",
    waits_for: "issue 13, found by CI-sized runs after C1/C2 were fixed (already failing on \
                096a0a9): refcount_table_offset pointed at another metadata table (seed \
                0xa137e96ae529: at the snapshot's L1 table, plus an unaligned L1 entry); after \
                `-r all` qemu-img's re-check finds 194 corruptions (exit 1), ours 1 corruption \
                and 1 leak (exit 2)",
    case: |c| c.mutates("refcount_table_offset", Some("point_at")),
    failure: |f| f.kind == Kind::RepairDisagrees,
}];

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
