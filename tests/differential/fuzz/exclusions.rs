//! Classes of cases known to differ from QEMU while the fixes are under way. The default run
//! keeps clear of them: a `Skip` entry drops a case of the class, a `Narrow` entry rewrites the
//! case so that it stays out of the class while keeping the rest of it (cheaper in coverage).
//! `BLOCKFAULT_FUZZ_ALL=1` turns them all off. Each entry names what it waits for: the issue
//! item, or the finding in the fuzzer's findings list. Delete the entry when that fix lands.

use super::case::{Command, Format, FuzzCase, Layer, Rule, Tok};

pub enum Action {
    /// the case is not run
    Skip(fn(&FuzzCase) -> bool),
    /// the case is rewritten; returns whether it changed
    Narrow(fn(&mut FuzzCase) -> bool),
}

pub struct Exclusion {
    pub name: &'static str,
    /// the issue item or finding whose fix makes this class compare equal
    pub waits_for: &'static str,
    pub action: Action,
}

pub const EXCLUSIONS: &[Exclusion] = &[
    Exclusion {
        name: "aio completion order",
        waits_for: "findings N15 (QEMU's first thread-pool job waits for the worker thread \
                    a bottom half spawns, so it completes a poll later than ours) and N16 (a \
                    reopen drains pending aio completions in QEMU, not in ours; h/reopen)",
        action: Action::Narrow(flush_after_aio),
    },
    Exclusion {
        name: "errors under alignment padding",
        waits_for: "finding N14: when the read of a read-modify-write fails, QEMU 10.0.2 \
                    ignores the error and writes its padding buffer, whose bytes are what \
                    glibc's malloc hands out (freed 0xab/0xcd buffers of qemu-io); ours \
                    writes zeroes",
        action: Action::Skip(|c| {
            // qcow2's own header, compressed and COW writes are unaligned at the file level
            // a probed raw image takes whole sectors (raw_refresh_limits)
            let probed_raw = c.image.format == Format::Raw && (!c.explicit_format || c.blkverify);
            let pad = align(c)
                .max(if direct(c) { 4096 } else { 1 })
                .max(if probed_raw { 512 } else { 1 });
            // only a rule that can fail a read fails the read of a read-modify-write
            let fails_reads = c.layer.rules().iter().any(|r| {
                matches!(
                    r,
                    Rule::Inject {
                        iotype: None | Some("read"),
                        ..
                    }
                )
            });
            fails_reads
                && pad > 1
                && (c.image.format == Format::Qcow2
                    || c.commands.iter().any(|cmd| {
                        writes_data(cmd) && {
                            let mut n = numbers(cmd);
                            let offset = n.next().unwrap_or(0);
                            !offset.is_multiple_of(pad) || !n.sum::<u64>().is_multiple_of(pad)
                        }
                    }))
        }),
    },
    Exclusion {
        name: "empty vector element in a padded request",
        waits_for: "seeds 0x41ab80a70cf7 and 0x495fc7018a41 (found by CI, 2026-11-25/26): our \
                    crash guard for empty elements in padded requests is not QEMU's \
                    bdrv_create_padded_qiov assertion, in both directions: with blkdebug \
                    align=1024 and max-transfer=12288, `aio_write -P 11 1318400 8704 0 1024 \
                    48128` is written by QEMU 10.0.2 and stopped by ours; under O_DIRECT \
                    (-t directsync) on qcow2, `writev 663794 0 270 65536` after an unaligned \
                    write and an aio_write aborts QEMU and is written by ours",
        action: Action::Skip(|c| {
            (c.layer.align() > 1 && c.layer.max_transfer() > 0 || direct(c))
                && c.commands.iter().any(|cmd| {
                    matches!(cmd.name, "writev" | "readv" | "aio_write" | "aio_read")
                        && numbers(cmd).skip(1).any(|n| n == 0)
                })
        }),
    },
    Exclusion {
        name: "aio zero write after a qcow2 truncate under blkdebug",
        waits_for: "finding N11: QEMU's zero write yields on the L2 load after the truncate, \
                    ours completes it at once, so an earlier aio completion prints after it",
        action: Action::Skip(|c| {
            c.image.format == Format::Qcow2
                && c.layer.has_blkdebug()
                && c.commands.iter().enumerate().any(|(i, cmd)| {
                    cmd.name == "truncate"
                        && c.commands[i + 1..]
                            .iter()
                            .any(|a| a.name == "aio_write" && a.args.contains(&Tok::Flag("-z")))
                })
        }),
    },
    Exclusion {
        name: "reopen with O_DIRECT",
        waits_for: "a reopen under or into O_DIRECT (seeds 0x77aaa75f, 0x77aab66a): after \
                    `-t none -c reopen`, a qcow2 `truncate 0` leaves QEMU's file at 1536 bytes, \
                    ours padded to 4096; after `reopen -c directsync` a raw `aio_write -z` past \
                    the end trips QEMU's total_sectors assertion, ours writes it",
        action: Action::Skip(|c| direct(c) && c.commands.iter().any(|cmd| cmd.name == "reopen")),
    },
    Exclusion {
        name: "compressed write over several clusters",
        waits_for: "seed 0x48b3f35ec0e5 (found by CI, 2026-11-26): QEMU 10.0.2 compresses the \
                    clusters of one `write -c` in parallel thread-pool jobs and allocates each \
                    when its job ends, so the order of their host offsets (the L2 entries) \
                    varies with timing (5:3 and 7:1 splits over runs of the same case); ours \
                    always takes one order. Waits for comparing such images modulo that order",
        action: Action::Skip(|c| {
            let cluster = c.image.cluster_size.max(1);
            c.image.format == Format::Qcow2
                && c.commands.iter().any(|cmd| {
                    cmd.name == "write" && cmd.args.contains(&Tok::Flag("-c")) && {
                        let mut n = numbers(cmd);
                        let (offset, len) = (n.next().unwrap_or(0), n.next().unwrap_or(0));
                        len > 0 && offset / cluster != (offset + len - 1) / cluster
                    }
                })
        }),
    },
];

/// Applies the exclusions to `case`: `Err(name)` when one skips it, else the names of those that
/// narrowed it.
pub fn apply(case: &mut FuzzCase) -> Result<Vec<&'static str>, &'static str> {
    apply_except(case, None)
}

/// [`apply`] without the exclusion named `except`.
pub fn apply_except(
    case: &mut FuzzCase,
    except: Option<&str>,
) -> Result<Vec<&'static str>, &'static str> {
    let mut narrowed = Vec::new();
    for e in EXCLUSIONS.iter().filter(|e| Some(e.name) != except) {
        match e.action {
            Action::Skip(applies) => {
                if applies(case) {
                    return Err(e.name);
                }
            }
            Action::Narrow(narrow) => {
                if narrow(case) {
                    narrowed.push(e.name);
                }
            }
        }
    }
    Ok(narrowed)
}

/// Whether the named exclusion would skip or rewrite `case`; None if there is no such exclusion.
pub fn touches(name: &str, case: &FuzzCase) -> Option<bool> {
    let e = EXCLUSIONS.iter().find(|e| e.name == name)?;
    Some(match e.action {
        Action::Skip(applies) => applies(case),
        Action::Narrow(narrow) => narrow(&mut case.clone()),
    })
}

/// What the named exclusion waits for.
pub fn waits_for(name: &str) -> &'static str {
    EXCLUSIONS
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.waits_for)
        .unwrap_or("")
}

/// Whether the exclusions leave `case` alone (the minimiser keeps only such candidates).
pub fn untouched(case: &FuzzCase) -> bool {
    untouched_except(case, None)
}

/// [`untouched`] by every exclusion but the one named `except`.
pub fn untouched_except(case: &FuzzCase, except: Option<&str>) -> bool {
    let mut c = case.clone();
    apply_except(&mut c, except).is_ok_and(|n| n.is_empty()) && c == *case
}

fn flush_after_aio(case: &mut FuzzCase) -> bool {
    let mut changed = false;
    let mut out = Vec::with_capacity(case.commands.len());
    let mut pending = false;
    for c in case.commands.drain(..) {
        if pending && c.name != "aio_flush" {
            out.push(Command::new("aio_flush", vec![]));
            changed = true;
        }
        pending = matches!(c.name, "aio_read" | "aio_write");
        out.push(c);
    }
    if pending {
        out.push(Command::new("aio_flush", vec![]));
        changed = true;
    }
    case.commands = out;
    changed
}

fn writes_data(c: &Command) -> bool {
    matches!(c.name, "write" | "writev" | "aio_write")
}

fn numbers(c: &Command) -> impl Iterator<Item = u64> + '_ {
    c.args.iter().filter_map(|t| match t {
        Tok::Num(n) => Some(*n),
        _ => None,
    })
}

fn align(case: &FuzzCase) -> u64 {
    match case.layer {
        Layer::Json { align, .. } => align,
        _ => 0,
    }
}

/// O_DIRECT: the file's own alignment pads requests too.
fn direct(case: &FuzzCase) -> bool {
    matches!(case.cache, Some("none" | "directsync"))
        || case.commands.iter().any(|c| {
            c.name == "reopen"
                && c.args
                    .iter()
                    .any(|t| matches!(t, Tok::OptWord("-c", "none" | "directsync")))
        })
}
