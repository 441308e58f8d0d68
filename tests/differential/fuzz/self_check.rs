//! The fuzzer's own machinery checked without running anything: the generator is a function of
//! the seed and reaches everything it claims to, the exclusions settle in one pass, and the
//! minimiser does minimise.

use super::case::{FuzzCase, Layer, Tok};
use super::{exclusions, generate::generate, shrink};
use blockfault::block::blkdebug::events::Event;
use std::collections::BTreeSet;

const SEEDS: u64 = 3000;

pub fn check() -> Result<(), String> {
    replayable()?;
    coverage()?;
    exclusions_settle()?;
    minimiser_minimises()
}

fn replayable() -> Result<(), String> {
    for seed in [0, 1, 0xdead_beef, u64::MAX] {
        if generate(seed) != generate(seed) {
            return Err(format!("seed 0x{seed:x} generates two different cases"));
        }
    }
    if generate(1) == generate(2) {
        return Err("seeds 1 and 2 generate the same case".into());
    }
    Ok(())
}

/// Everything the generator is meant to produce shows up within a few thousand seeds.
fn coverage() -> Result<(), String> {
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for seed in 0..SEEDS {
        let c = generate(seed);
        seen.insert(format!("format {}", c.image.format.name()));
        if c.image.cluster_size != 0 {
            seen.insert(format!("cluster_size {}", c.image.cluster_size));
            seen.insert(format!("v3 {}", c.image.v3));
            seen.insert(format!("lazy_refcounts {}", c.image.lazy_refcounts));
            seen.insert(format!("refcount_bits {}", c.image.refcount_bits));
        }
        seen.insert(format!("cache {}", c.cache.unwrap_or("default")));
        seen.insert(format!("explicit format {}", c.explicit_format));
        seen.insert(
            match &c.layer {
                Layer::Plain => "layer plain",
                Layer::Legacy { config: None } => "layer blkdebug::",
                Layer::Legacy { config: Some(_) } => "layer blkdebug:config:",
                Layer::Json {
                    config: Some(_), ..
                } => "layer json config",
                Layer::Json { .. } => "layer json inline",
            }
            .to_string(),
        );
        if c.blkverify {
            seen.insert("blkverify".into());
        }
        if c.layer.align() != 0 {
            seen.insert("align".into());
        }
        if c.layer.max_transfer() != 0 {
            seen.insert("max-transfer".into());
        }
        for r in c.layer.rules() {
            seen.insert(format!("event {}", r.event().name()));
            let text = super::case::Rules(vec![r.clone()]).config_text();
            for key in [
                "state",
                "errno",
                "sector",
                "once",
                "immediately",
                "iotype",
                "new_state",
            ] {
                if text.contains(&format!("\n{key} = ")) {
                    seen.insert(format!("rule key {key}"));
                }
            }
        }
        for cmd in &c.commands {
            seen.insert(format!("command {}", cmd.name));
            for t in &cmd.args {
                if let Tok::Flag(f) | Tok::Opt(f, _) | Tok::OptWord(f, _) = t {
                    seen.insert(format!("command {} {f}", cmd.name));
                }
            }
        }
    }
    let mut expected: Vec<String> = Vec::new();
    expected.extend(["raw", "qcow2"].map(|f| format!("format {f}")));
    expected.extend((9..=21).map(|b| format!("cluster_size {}", 1u64 << b)));
    expected.extend(["v3 true", "v3 false", "lazy_refcounts true"].map(String::from));
    expected.extend((0..=6).map(|b| format!("refcount_bits {}", 1u64 << b)));
    expected.extend(
        [
            "default",
            "none",
            "writeback",
            "writethrough",
            "directsync",
            "unsafe",
        ]
        .map(|m| format!("cache {m}")),
    );
    expected.extend(
        [
            "explicit format false",
            "layer plain",
            "layer blkdebug::",
            "layer blkdebug:config:",
            "layer json config",
            "layer json inline",
            "align",
            "max-transfer",
            "blkverify",
        ]
        .map(String::from),
    );
    expected.extend(Event::ALL.iter().map(|e| format!("event {}", e.name())));
    expected.extend(
        [
            "state",
            "errno",
            "sector",
            "once",
            "immediately",
            "iotype",
            "new_state",
        ]
        .map(|k| format!("rule key {k}")),
    );
    expected.extend(
        [
            "read",
            "read -P",
            "read -v",
            "read -b",
            "write",
            "write -b",
            "write -P",
            "write -z",
            "write -u",
            "write -c",
            "write -f",
            "readv",
            "writev",
            "aio_read",
            "aio_write",
            "aio_write -z",
            "aio_flush",
            "flush",
            "discard",
            "truncate",
            "truncate -m",
            "length",
            "map",
            "alloc",
            "break",
            "wait_break",
            "resume",
            "remove_break",
            "reopen",
            "reopen -r",
            "reopen -w",
            "reopen -c",
            "info",
            "sleep",
        ]
        .map(|c| format!("command {c}")),
    );
    let missing: Vec<&String> = expected.iter().filter(|e| !seen.contains(*e)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{SEEDS} seeds never generate: {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn exclusions_settle() -> Result<(), String> {
    for seed in 0..SEEDS {
        let mut c = generate(seed);
        if exclusions::apply(&mut c).is_ok() && !exclusions::untouched(&c) {
            return Err(format!(
                "seed 0x{seed:x}: the exclusions change a case they have already narrowed"
            ));
        }
    }
    Ok(())
}

/// With "has a write of 4 KiB or more" as the failure, a case shrinks to one such write on a
/// plain image with default options.
fn minimiser_minimises() -> Result<(), String> {
    let big_write = |c: &FuzzCase| {
        c.commands.iter().any(|cmd| {
            cmd.name == "write" && matches!(cmd.args.last(), Some(Tok::Num(n)) if *n >= 4096)
        })
    };
    let seed = (0..SEEDS)
        .find(|&s| {
            let c = generate(s);
            big_write(&c) && c.commands.len() >= 5 && !c.layer.rules().is_empty()
        })
        .ok_or("no seed generates a case to minimise")?;
    let (small, _) = shrink::minimise(&generate(seed), 10_000, big_write);
    let ok = small.commands.len() == 1
        && big_write(&small)
        && small.layer == Layer::Plain
        && small.cache.is_none()
        && small.commands[0].text() == "write 0 4096";
    if ok {
        Ok(())
    } else {
        Err(format!("seed 0x{seed:x} minimised to {:?}", small.args()))
    }
}
