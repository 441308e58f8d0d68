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
        waits_for: "issue 7: aio completion timing (QEMU completes requests that need no I/O \
                    from a bottom half at the next poll, newest first; synchronous commands poll); \
                    also overlapping aio requests not serialised under align, aio_write across \
                    truncate",
        action: Action::Narrow(flush_after_aio),
    },
    Exclusion {
        name: "qcow2 + breakpoints",
        waits_for: "issue 7: qcow2 writes resumed from breakpoints never complete",
        action: Action::Narrow(qcow2_without_breakpoints),
    },
    Exclusion {
        name: "zero-length iovec under padding",
        waits_for: "issue 7: QEMU crashes (zero-length iovec element in a padded request)",
        action: Action::Narrow(no_zero_length_elements),
    },
    Exclusion {
        name: "O_DIRECT padding at the end of the file",
        waits_for: "issue 7: -t none O_DIRECT padding (qcow2 files grow to the host block \
                    size; QEMU asserts on padded writes past the end of a raw file)",
        action: Action::Narrow(|c| {
            let padded =
                c.image.format == Format::Qcow2 || sizes(c).any(|s| !s.is_multiple_of(4096));
            padded && without_direct_io(c)
        }),
    },
    Exclusion {
        name: "qcow2 clusters smaller than blkdebug align",
        waits_for: "issue 7: qcow2 cluster_size=512 under blkdebug align=4096 lost writes",
        action: Action::Skip(|c| {
            c.image.format == Format::Qcow2 && align(c) > c.image.cluster_size
        }),
    },
    Exclusion {
        name: "errors under alignment padding",
        waits_for: "issue 7: errors during alignment RMW",
        action: Action::Skip(|c| {
            // qcow2's own header, compressed and COW writes are unaligned at the file level
            let pad = align(c).max(if direct(c) { 4096 } else { 1 });
            has_inject_rules(c)
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
        name: "image size not a multiple of blkdebug align",
        waits_for: "issue 7: blkdebug align=4096 over 5120-byte image",
        action: Action::Skip(|c| {
            let a = align(c);
            a > 1 && c.image.format == Format::Raw && sizes(c).any(|s| !s.is_multiple_of(a))
        }),
    },
    Exclusion {
        name: "raw image size not a multiple of 512",
        waits_for: "issue 7: 1000-byte raw length (requests within the last partial sector)",
        action: Action::Skip(|c| {
            c.image.format == Format::Raw && sizes(c).any(|s| !s.is_multiple_of(512))
        }),
    },
    Exclusion {
        name: "probe through failing rules",
        waits_for: "issue 7: failed probe ignored",
        // blkverify always probes its test image
        action: Action::Skip(|c| (!c.explicit_format || c.blkverify) && has_inject_rules(c)),
    },
    Exclusion {
        name: "multi-cluster compressed write that can fail",
        waits_for: "issue 7: multi-cluster compressed write with failing cluster (a cluster \
                    fails by a rule, or because an earlier write allocated it)",
        action: Action::Skip(|c| {
            c.image.format == Format::Qcow2
                && c.commands.iter().enumerate().any(|(i, cmd)| {
                    cmd.name == "write"
                        && cmd.args.contains(&Tok::Flag("-c"))
                        && numbers(cmd)
                            .nth(1)
                            .is_some_and(|len| len > c.image.cluster_size)
                        && (has_inject_rules(c) || c.commands[..i].iter().any(writes_data))
                })
        }),
    },
    Exclusion {
        name: "map after failing block-status",
        waits_for: "issue 7: map after failing block-status",
        action: Action::Skip(|c| {
            c.layer.rules().iter().any(|r| {
                matches!(
                    r,
                    Rule::Inject {
                        iotype: Some("block-status"),
                        ..
                    }
                )
            }) && c.commands.iter().any(|cmd| cmd.name == "map")
        }),
    },
    Exclusion {
        name: "unaligned discard under align (QEMU SIGFPE)",
        waits_for: "issue 7: QEMU crashes (SIGFPE discard with align)",
        action: Action::Skip(|c| {
            let a = align(c);
            a > 1
                && c.commands
                    .iter()
                    .any(|cmd| cmd.name == "discard" && numbers(cmd).any(|n| !n.is_multiple_of(a)))
        }),
    },
    Exclusion {
        name: "zero-length compressed write",
        waits_for: "finding N1: qcow2 `write -c OFF 0` rounds the image file up to 512 bytes",
        action: Action::Skip(|c| {
            c.image.format == Format::Qcow2
                && c.commands.iter().any(|cmd| {
                    cmd.name == "write"
                        && cmd.args.contains(&Tok::Flag("-c"))
                        && numbers(cmd).nth(1) == Some(0)
                })
        }),
    },
    Exclusion {
        name: "json: filename without a format driver",
        waits_for: "finding N2: json: without a top-level driver probes the format",
        action: Action::Skip(|c| matches!(c.layer, Layer::Json { .. }) && !c.explicit_format),
    },
    Exclusion {
        name: "reopen with rules",
        waits_for: "finding N3: a reopen whose flush fails fails in QEMU",
        action: Action::Skip(|c| {
            has_inject_rules(c) && c.commands.iter().any(|cmd| cmd.name == "reopen")
        }),
    },
    Exclusion {
        name: "flush events on a read-only node",
        waits_for: "finding N4: QEMU does not flush a read-only node (no flush_to_os)",
        action: Action::Skip(|c| {
            c.commands
                .iter()
                .any(|cmd| cmd.name == "reopen" && cmd.args.contains(&Tok::Flag("-r")))
                && watches_flush_events(c)
        }),
    },
    Exclusion {
        name: "cache=unsafe with flush rules",
        waits_for: "finding N5: FUA writes under cache=unsafe and flush_to_os rules",
        action: Action::Skip(|c| {
            (c.cache == Some("unsafe")
                || c.commands.iter().any(|cmd| {
                    cmd.name == "reopen" && cmd.args.contains(&Tok::OptWord("-c", "unsafe"))
                }))
                && watches_flush_events(c)
        }),
    },
    Exclusion {
        name: "flush after a failed qcow2 truncate",
        waits_for: "finding N7: a qcow2 truncate refused for its size leaves ours dirty, so \
                    the next flush reaches flush_to_disk",
        action: Action::Skip(|c| {
            c.image.format == Format::Qcow2
                && watches_flush_events(c)
                && c.commands.iter().any(|cmd| {
                    cmd.name == "truncate"
                        && numbers(cmd).last().is_some_and(|n| !n.is_multiple_of(512))
                })
        }),
    },
    Exclusion {
        name: "full preallocation under O_DIRECT",
        waits_for: "finding N8: `truncate -m full` with O_DIRECT fails in QEMU (EINVAL)",
        action: Action::Skip(|c| {
            direct(c)
                && c.commands.iter().any(|cmd| {
                    cmd.name == "truncate" && cmd.args.contains(&Tok::OptWord("-m", "full"))
                })
        }),
    },
    Exclusion {
        name: "qcow2 write over several L2 slices with rules",
        waits_for: "finding N9: when one chunk of a qcow2 write fails, QEMU's parallel write \
                    tasks have allocated and written more of the others",
        action: Action::Skip(|c| {
            let cs = c.image.cluster_size;
            let slice = cs.min(4096) / 8 * cs;
            c.image.format == Format::Qcow2
                && has_inject_rules(c)
                && c.commands.iter().any(|cmd| {
                    let mut n = numbers(cmd);
                    let offset = n.next().unwrap_or(0);
                    let end = offset + n.sum::<u64>();
                    writes_data(cmd) && end > 0 && offset / slice != (end - 1) / slice
                })
        }),
    },
    Exclusion {
        name: "blkverify + truncate",
        waits_for: "issue 7: blkverify truncate",
        action: Action::Skip(|c| {
            c.blkverify && c.commands.iter().any(|cmd| cmd.name == "truncate")
        }),
    },
];

/// Applies the exclusions to `case`: `Err(name)` when one skips it, else the names of those that
/// narrowed it.
pub fn apply(case: &mut FuzzCase) -> Result<Vec<&'static str>, &'static str> {
    let mut narrowed = Vec::new();
    for e in EXCLUSIONS {
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
    let mut c = case.clone();
    apply(&mut c).is_ok_and(|n| n.is_empty()) && c == *case
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

fn qcow2_without_breakpoints(case: &mut FuzzCase) -> bool {
    if case.image.format != Format::Qcow2 {
        return false;
    }
    let before = case.commands.len();
    case.commands
        .retain(|c| !matches!(c.name, "break" | "resume" | "wait_break" | "remove_break"));
    case.commands.len() != before
}

fn no_zero_length_elements(case: &mut FuzzCase) -> bool {
    let mut changed = false;
    for c in &mut case.commands {
        if !matches!(c.name, "readv" | "writev" | "aio_read" | "aio_write") {
            continue;
        }
        // the offset, then the lengths
        let lengths = numbers(c).count().saturating_sub(1);
        if lengths < 2 {
            continue;
        }
        let mut seen_offset = false;
        let before = c.args.len();
        c.args.retain(|t| match t {
            Tok::Num(0) if seen_offset => false,
            Tok::Num(_) => {
                seen_offset = true;
                true
            }
            _ => true,
        });
        if numbers(c).count() < 2 {
            c.args.push(Tok::Num(512));
        }
        changed |= c.args.len() != before;
    }
    changed
}

fn writes_data(c: &Command) -> bool {
    matches!(c.name, "write" | "writev" | "aio_write")
}

/// Rules or breakpoints on flush_to_os/flush_to_disk (or `none`, which fails flushes too).
fn watches_flush_events(case: &FuzzCase) -> bool {
    let flushy = |e: &str| matches!(e, "flush_to_os" | "flush_to_disk" | "none");
    case.layer.rules().iter().any(|r| flushy(r.event().name()))
        || case.commands.iter().any(|cmd| {
            cmd.name == "break" && matches!(cmd.args.first(), Some(Tok::Word(e)) if flushy(e))
        })
}

fn has_inject_rules(case: &FuzzCase) -> bool {
    case.layer
        .rules()
        .iter()
        .any(|r| matches!(r, Rule::Inject { .. }))
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

/// Cache modes without O_DIRECT instead of those with it (at open and in reopen).
fn without_direct_io(case: &mut FuzzCase) -> bool {
    let buffered = |m: &'static str| match m {
        "none" => "writeback",
        "directsync" => "writethrough",
        other => other,
    };
    let before = case.clone();
    case.cache = case.cache.map(buffered);
    for c in &mut case.commands {
        for t in &mut c.args {
            if let Tok::OptWord("-c", m) = t {
                *m = buffered(m);
            }
        }
    }
    *case != before
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

/// Every size the image has: created, then each truncate.
fn sizes(case: &FuzzCase) -> impl Iterator<Item = u64> + '_ {
    std::iter::once(case.image.size).chain(
        case.commands
            .iter()
            .filter(|c| c.name == "truncate")
            .filter_map(|c| numbers(c).last()),
    )
}
