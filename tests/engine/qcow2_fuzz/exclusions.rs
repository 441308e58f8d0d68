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

pub const EXCLUSIONS: &[Exclusion] = &[
    Exclusion {
        name: "metadata read past the end of the file",
        waits_for: "q13-findings C1 (check/open/info): QEMU reads metadata that runs past the end \
                    of the file as zeroes (snapshot table, refcount blocks) and opens/checks the \
                    image; ours fails the read with EIO ('Failed to read snapshot table: \
                    Input/output error', 'Can't get refcount for cluster N: Input/output error')",
        case: |_| true,
        failure: |f| {
            disagreement(f)
                && ((ours_says(f, "Input/output error") && !qemu_says(f, "Input/output error"))
                    || (f.kind == Kind::InfoDisagrees
                        && f.detail.starts_with("the JSON differs: snapshots:")
                        && f.detail.ends_with("ours absent")))
        },
    },
    Exclusion {
        name: "snapshot table validation",
        waits_for: "q13-findings C2 (check/open/info): QEMU's check reports incomplete snapshot \
                    table entries, an invalid or too large snapshot table and oversized extra \
                    data (and -r all drops the extra data); ours accepts the table or refuses \
                    to open it",
        case: |_| true,
        failure: |f| {
            disagreement(f)
                && [
                    "is incomplete",
                    "snapshot table offset invalid",
                    "snapshot table too large",
                    "Too much extra metadata",
                    "Too many snapshots",
                ]
                .iter()
                .any(|m| qemu_says(f, m) || ours_says(f, m))
        },
    },
    Exclusion {
        name: "repair without metadata overlap checks",
        waits_for: "q13-findings C7 (check/open/info): QEMU's check -r refuses writes that would \
                    overlap metadata (and fails the repair); ours writes them",
        case: |_| true,
        failure: |f| disagreement(f) && qemu_says(f, "Preventing invalid write on metadata"),
    },
];

fn disagreement(f: &Failure) -> bool {
    matches!(
        f.kind,
        Kind::CheckDisagrees | Kind::RepairDisagrees | Kind::InfoDisagrees
    )
}

fn qemu_says(f: &Failure, what: &str) -> bool {
    f.qemu.as_ref().is_some_and(|q| q.stderr.contains(what))
}

fn ours_says(f: &Failure, what: &str) -> bool {
    f.ours.stderr.contains(what)
}

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
