//! `blockfault events`: every blkdebug event, when it fires, on which node, and which qemu-io
//! commands raise it. The commands are not written down by hand: each probe below runs on the
//! builtin engine with blkdebug's trace on, and the events it raised are read from the trace.

use blockfault::block::blkdebug::events::Event;
use blockfault::output::{Capture, Sink, Stream};
use serde::Serialize;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// The formats the probes cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }
}

/// Where blkdebug sits in a probe's graph.
#[derive(Clone, Copy)]
enum Layout {
    /// FORMAT -> blkdebug -> file: blkdebug sees what the format driver does to its file.
    Below,
    /// blkdebug -> FORMAT -> file: blkdebug sees the block layer's own events on the top node.
    Above,
}

/// One representative command sequence.
struct Probe {
    format: Format,
    label: &'static str,
    /// `qemu-img` argv lists run first (`create`, ...), on `t.img` and `base.img`
    images: &'static [&'static str],
    layout: Layout,
    /// extra blkdebug options, as `"align": 4096`
    blkdebug: &'static str,
    copy_on_read: bool,
    /// `prepare` runs in a qemu-io process of its own, so that the traced one starts with
    /// empty caches
    prepare_apart: bool,
    /// run before, untraced
    prepare: &'static [&'static str],
    /// the commands whose events are recorded
    commands: &'static [&'static str],
}

const QCOW2: &[&str] = &["create -q -f qcow2 t.img 1M"];
const QCOW2_512: &[&str] = &["create -q -f qcow2 -o cluster_size=512 t.img 1M"];
const QCOW2_512_16M: &[&str] = &["create -q -f qcow2 -o cluster_size=512 t.img 16M"];
const QCOW2_1G: &[&str] = &["create -q -f qcow2 t.img 1G"];
const QCOW2_OVER_BASE: &[&str] = &[
    "create -q -f qcow2 base.img 1M",
    "create -q -f qcow2 -b base.img -F qcow2 t.img",
];
const RAW: &[&str] = &["create -q -f raw t.img 1M"];

const fn probe(
    format: Format,
    label: &'static str,
    images: &'static [&'static str],
    prepare: &'static [&'static str],
    commands: &'static [&'static str],
) -> Probe {
    Probe {
        format,
        label,
        images,
        layout: Layout::Below,
        blkdebug: "",
        copy_on_read: false,
        prepare_apart: false,
        prepare,
        commands,
    }
}

use Format::{Qcow2, Raw};

/// The probes, per format in the order they are listed.
const PROBES: &[Probe] = &[
    probe(
        Qcow2,
        "read of an unallocated cluster",
        QCOW2,
        &[],
        &["read 0 64k"],
    ),
    probe(
        Qcow2,
        "read of an allocated cluster",
        QCOW2,
        &["write 0 64k"],
        &["read 0 64k"],
    ),
    probe(
        Qcow2,
        "first write (allocates an L2 table and a data cluster)",
        QCOW2,
        &[],
        &["write 0 64k"],
    ),
    Probe {
        prepare_apart: true,
        ..probe(
            Qcow2,
            "read in a new process (the L2 table is not cached)",
            QCOW2,
            &["write 0 64k"],
            &["read 0 64k"],
        )
    },
    probe(
        Qcow2,
        "write allocating a data cluster",
        QCOW2,
        &["write 0 64k"],
        &["write 64k 64k"],
    ),
    probe(
        Qcow2,
        "write of an allocated cluster",
        QCOW2,
        &["write 0 64k"],
        &["write 0 64k"],
    ),
    probe(
        Qcow2,
        "partial write to a new cluster",
        QCOW2,
        &["write 0 64k"],
        &["write 64k 512"],
    ),
    probe(
        Qcow2,
        "aio_write allocating a data cluster",
        QCOW2,
        &["write 0 64k"],
        &["aio_write 64k 64k", "aio_flush"],
    ),
    probe(
        Qcow2,
        "write -z of an allocated cluster",
        QCOW2,
        &["write 0 64k"],
        &["write -z 0 64k"],
    ),
    probe(
        Qcow2,
        "write -z of an unallocated cluster",
        QCOW2,
        &["write 0 64k"],
        &["write -z 64k 64k"],
    ),
    probe(
        Qcow2,
        "write -c (compressed)",
        QCOW2,
        &["write 0 64k"],
        &["write -c 64k 64k"],
    ),
    probe(
        Qcow2,
        "read of a compressed cluster",
        QCOW2,
        &["write -c 0 64k"],
        &["read 0 64k"],
    ),
    probe(
        Qcow2,
        "discard",
        QCOW2,
        &["write 0 64k"],
        &["discard 0 64k"],
    ),
    probe(
        Qcow2,
        "flush after a write",
        QCOW2,
        &["write 0 64k"],
        &["flush"],
    ),
    probe(
        Qcow2,
        "truncate (grow, L1 table grows; cluster_size=512)",
        QCOW2_512,
        &[],
        &["truncate 2M"],
    ),
    probe(
        Qcow2,
        "truncate (shrink, frees an L2 table)",
        QCOW2_1G,
        &["write 0 64k", "write 768M 64k"],
        &["truncate 64k"],
    ),
    probe(
        Qcow2,
        "write needing a new refcount block (cluster_size=512)",
        QCOW2_512,
        &["write 0 110k"],
        &["write 110k 30k"],
    ),
    probe(
        Qcow2,
        "write growing the refcount table (cluster_size=512)",
        QCOW2_512_16M,
        &["write 0 7M"],
        &["write 7M 2M"],
    ),
    probe(
        Qcow2,
        "read from the backing file",
        QCOW2_OVER_BASE,
        &[],
        &["read 0 64k"],
    ),
    probe(
        Qcow2,
        "partial write over the backing file (COW)",
        QCOW2_OVER_BASE,
        &[],
        &["write 512 512"],
    ),
    probe(
        Qcow2,
        "write -b (VM state)",
        QCOW2,
        &[],
        &["write -b 0 512"],
    ),
    probe(
        Qcow2,
        "read -b (VM state)",
        QCOW2,
        &["write -b 0 512"],
        &["read -b 0 512"],
    ),
    Probe {
        layout: Layout::Above,
        copy_on_read: true,
        ..probe(
            Qcow2,
            "read with -C (copy-on-read) through blkdebug on top of qcow2 with a backing file",
            QCOW2_OVER_BASE,
            &[],
            &["read 0 64k"],
        )
    },
    probe(Raw, "read", RAW, &[], &["read 0 64k"]),
    probe(Raw, "write", RAW, &[], &["write 0 64k"]),
    probe(
        Raw,
        "aio_write",
        RAW,
        &[],
        &["aio_write 0 64k", "aio_flush"],
    ),
    probe(Raw, "write -z", RAW, &[], &["write -z 0 64k"]),
    probe(Raw, "discard", RAW, &[], &["discard 0 64k"]),
    probe(Raw, "flush", RAW, &["write 0 512"], &["flush"]),
    probe(Raw, "truncate", RAW, &[], &["truncate 2M"]),
    Probe {
        blkdebug: r#""align": 4096"#,
        ..probe(
            Raw,
            "write smaller than blkdebug's align=4096 (read-modify-write)",
            RAW,
            &[],
            &["write 512 512"],
        )
    },
];

/// When an event fires and on which node, one line each, in QAPI order.
const ABOUT: [(&str, &str); Event::COUNT] = [
    (
        "qcow2 is about to write one L1 entry (a new or copied L2 table hooked up, or one freed)",
        QCOW2_FILE,
    ),
    (
        "qcow2 grows its L1 table: before allocating clusters for the bigger table",
        QCOW2_FILE,
    ),
    (
        "qcow2 grows its L1 table: before writing the new table",
        QCOW2_FILE,
    ),
    (
        "qcow2 grows its L1 table: before pointing the header at the new table",
        QCOW2_FILE,
    ),
    (
        "qcow2 reads an L2 table from its file (a miss in the L2 cache)",
        QCOW2_FILE,
    ),
    (
        "qcow2 writes a dirty L2 table out of its cache (at a flush, an eviction, or a dependent write)",
        QCOW2_FILE,
    ),
    (
        "qcow2 is about to put the entry of a new compressed cluster into its L2 table",
        QCOW2_FILE,
    ),
    (
        "qcow2 reads an old L2 table to copy it into a newly allocated one (one shared with an internal snapshot; the builtin qemu-img makes none)",
        QCOW2_FILE,
    ),
    (
        "qcow2 is about to write a newly allocated L2 table",
        QCOW2_FILE,
    ),
    (
        "qcow2 is about to read guest data from an allocated cluster; raw before every read",
        FORMAT_FILE,
    ),
    (
        "qcow2 is about to read an unallocated range from its backing file (the next request on THIS node is what a rule fails, not the backing read)",
        QCOW2_FILE,
    ),
    ("qcow2 is about to read a compressed cluster", QCOW2_FILE),
    (
        "qcow2 is about to write guest data to a data cluster; raw before every write",
        FORMAT_FILE,
    ),
    ("qcow2 is about to write a compressed cluster", QCOW2_FILE),
    (
        "qcow2 is about to read VM state (qemu-io `read -b`)",
        QCOW2_FILE,
    ),
    (
        "qcow2 is about to write VM state (qemu-io `write -b`)",
        QCOW2_FILE,
    ),
    (
        "qcow2 reads the parts of a new cluster that a partial write leaves (copy on write)",
        QCOW2_FILE,
    ),
    (
        "qcow2 writes those parts into the new cluster (copy on write)",
        QCOW2_FILE,
    ),
    ("qcow2 reads its refcount table, at open", QCOW2_FILE),
    ("qcow2 grows its refcount table", QCOW2_FILE),
    (
        "qcow2 empties the image (qemu-img commit's make_empty): before writing the emptied refcount table; no qemu-io command",
        QCOW2_FILE,
    ),
    (
        "qcow2 reads a refcount block from its file (a miss in the refcount cache)",
        QCOW2_FILE,
    ),
    (
        "never raised by QEMU 10.0.2 (a rule on it never arms)",
        NOWHERE,
    ),
    (
        "qcow2 writes a dirty refcount block out of its cache",
        QCOW2_FILE,
    ),
    (
        "qcow2 looks for (and maybe allocates) the refcount block covering a cluster it allocates",
        QCOW2_FILE,
    ),
    (
        "qcow2 hooks a new refcount block into the refcount table",
        QCOW2_FILE,
    ),
    ("qcow2 writes a new refcount block", QCOW2_FILE),
    (
        "qcow2 grows the refcount table: writes the new refcount blocks",
        QCOW2_FILE,
    ),
    (
        "qcow2 grows the refcount table: writes the new table",
        QCOW2_FILE,
    ),
    (
        "qcow2 grows the refcount table: points the header at the new table",
        QCOW2_FILE,
    ),
    (
        "qcow2 allocates clusters (metadata, or data clusters for a write)",
        QCOW2_FILE,
    ),
    (
        "qcow2 allocates bytes inside a cluster (compressed data)",
        QCOW2_FILE,
    ),
    (
        "qcow2 frees clusters (a refcount dropped to zero, and discards are passed down)",
        QCOW2_FILE,
    ),
    (
        "a flush of a node, before it flushes to the OS",
        FLUSHED_CHILD,
    ),
    (
        "a flush of a node, before it flushes to disk (skipped when nothing was written since the last flush)",
        FLUSHED_CHILD,
    ),
    (
        "a write not aligned to the node's request alignment: before reading the head to merge",
        WRITTEN_NODE,
    ),
    (
        "a write not aligned to the node's request alignment: after reading the head",
        WRITTEN_NODE,
    ),
    (
        "a write not aligned to the node's request alignment: before reading the tail to merge",
        WRITTEN_NODE,
    ),
    (
        "a write not aligned to the node's request alignment: after reading the tail",
        WRITTEN_NODE,
    ),
    (
        "the block layer is about to pass a write down to the node's driver",
        WRITTEN_NODE,
    ),
    (
        "the block layer is about to pass a write-zeroes down to the node's driver",
        WRITTEN_NODE,
    ),
    (
        "the block layer finished a write or write-zeroes on the node",
        WRITTEN_NODE,
    ),
    (
        "qcow2 empties the image (qemu-img commit's make_empty), before anything else; no qemu-io command",
        QCOW2_FILE,
    ),
    (
        "qcow2 shrinks: before writing the shortened L1 table",
        QCOW2_FILE,
    ),
    (
        "qcow2 shrinks: before freeing the L2 tables past the new end",
        QCOW2_FILE,
    ),
    ("copy-on-read is about to write back what it read", COR_NODE),
    (
        "qcow2 is about to zero a whole new cluster instead of copying zeroes into its unwritten parts",
        QCOW2_FILE,
    ),
    (
        "blkdebug itself, once the node is open: rules on it apply from the first request",
        BLKDEBUG_NODE,
    ),
];

const QCOW2_FILE: &str = "the qcow2 node's file child";
const FORMAT_FILE: &str = "the format node's file child";
const FLUSHED_CHILD: &str = "the primary child of the node being flushed";
const WRITTEN_NODE: &str = "the node being written";
const COR_NODE: &str = "the node read with copy-on-read";
const BLKDEBUG_NODE: &str = "the blkdebug node";
const NOWHERE: &str = "-";

/// What one probe raised, in order.
#[derive(Debug, Serialize)]
pub struct ProbeResult {
    pub format: Format,
    pub label: &'static str,
    pub commands: &'static [&'static str],
    pub events: Vec<String>,
}

/// One event's entry.
#[derive(Debug, Serialize)]
pub struct EventEntry {
    pub name: &'static str,
    pub fires: &'static str,
    pub node: &'static str,
    /// per format, the probes that raised it, with how often
    pub raised_by: Vec<RaisedBy>,
}

#[derive(Debug, Serialize)]
pub struct RaisedBy {
    pub format: Format,
    pub probe: &'static str,
    pub times: usize,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub events: Vec<EventEntry>,
    pub probes: Vec<ProbeResult>,
}

/// A sink keeping qemu-io's output lines and the trace lines in causal order.
#[derive(Default)]
struct Recorder {
    lines: Vec<(bool, String)>,
    partial: String,
}

impl Recorder {
    fn end_output(&mut self) {
        if !self.partial.is_empty() {
            let text = std::mem::take(&mut self.partial);
            self.lines
                .extend(text.lines().map(|l| (false, l.to_string())));
        }
    }
}

impl Sink for Recorder {
    fn write(&mut self, _stream: Stream, text: &str) {
        self.partial.push_str(text);
    }
    fn traces_blkdebug(&self) -> bool {
        true
    }
    fn trace(&mut self, text: &str) {
        self.end_output();
        self.lines
            .extend(text.lines().map(|l| (true, l.to_string())));
    }
}

/// The marker command: it prints a line and does no I/O.
const MARK: &str = "length";

fn run_probe(p: &Probe, dir: &Path) -> Result<Vec<String>, String> {
    for create in p.images {
        let args: Vec<String> = create.split(' ').map(str::to_string).collect();
        let capture = Rc::new(RefCell::new(Capture::default()));
        if blockfault::img::run(&args, dir, capture.clone()) != 0 {
            return Err(format!("qemu-img {create}: {}", capture.borrow().combined));
        }
    }
    let fmt = p.format.name();
    let extra = if p.blkdebug.is_empty() {
        String::new()
    } else {
        format!(", {}", p.blkdebug)
    };
    let drive = match p.layout {
        Layout::Below => format!(
            r#"json:{{"driver": "{fmt}", "file": {{"driver": "blkdebug"{extra}, "image": {{"driver": "file", "filename": "t.img"}}}}}}"#
        ),
        Layout::Above => format!(
            r#"json:{{"driver": "blkdebug"{extra}, "image": {{"driver": "{fmt}", "file": {{"driver": "file", "filename": "t.img"}}}}}}"#
        ),
    };
    let mut commands: Vec<String> = p.prepare.iter().map(|c| c.to_string()).collect();
    if p.prepare_apart {
        let inv = blockfault::qemu_io::Invocation {
            commands: std::mem::take(&mut commands),
            format: Some(fmt.into()),
            drive: Some("t.img".into()),
            skip_host_sync: true,
            ..Default::default()
        };
        let capture = Rc::new(RefCell::new(Capture::default()));
        if blockfault::qemu_io::run(&inv, dir, capture.clone()) != 0 {
            return Err(format!("preparing: {}", capture.borrow().combined));
        }
    }
    commands.push(MARK.into());
    commands.extend(p.commands.iter().map(|c| c.to_string()));
    commands.push(MARK.into());
    let inv = blockfault::qemu_io::Invocation {
        commands,
        drive: Some(drive),
        copy_on_read: p.copy_on_read,
        skip_host_sync: true,
        ..Default::default()
    };
    let recorder = Rc::new(RefCell::new(Recorder::default()));
    let status = blockfault::qemu_io::run(&inv, dir, recorder.clone());
    let mut r = recorder.borrow_mut();
    r.end_output();
    let is_mark = |l: &str| {
        let mut words = l.split(' ');
        let (Some(n), Some(unit), None) = (words.next(), words.next(), words.next()) else {
            return false;
        };
        n.parse::<f64>().is_ok() && matches!(unit, "bytes" | "KiB" | "MiB" | "GiB")
    };
    let marks: Vec<usize> = r
        .lines
        .iter()
        .enumerate()
        .filter(|(_, (trace, l))| !trace && is_mark(l))
        .map(|(i, _)| i)
        .collect();
    let [first, .., last] = marks[..] else {
        let out: Vec<&str> = r.lines.iter().map(|(_, l)| l.as_str()).collect();
        return Err(format!(
            "status {status}, no markers in:\n{}",
            out.join("\n")
        ));
    };
    let mut events = Vec::new();
    for (trace, line) in &r.lines[first + 1..last] {
        if !trace {
            if line.contains("failed") {
                return Err(format!("{}: {line}", p.label));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("blkdebug trace: event ") {
            let name = rest.split(' ').next().unwrap_or_default();
            events.push(name.to_string());
        }
    }
    Ok(events)
}

/// Runs the probes for `format` (all formats if None) in a scratch directory each.
pub fn report(format: Option<Format>) -> Result<Report, String> {
    let mut probes = Vec::new();
    for p in PROBES
        .iter()
        .filter(|p| format.is_none_or(|f| f == p.format))
    {
        let dir = scratch_dir()?;
        let events = run_probe(p, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        probes.push(ProbeResult {
            format: p.format,
            label: p.label,
            commands: p.commands,
            events: events.map_err(|e| format!("probe `{}`: {e}", p.label))?,
        });
    }
    let events = Event::ALL
        .iter()
        .zip(ABOUT)
        .map(|(e, (fires, node))| EventEntry {
            name: e.name(),
            fires,
            node,
            raised_by: probes
                .iter()
                .filter_map(|p| {
                    let times = p.events.iter().filter(|n| *n == e.name()).count();
                    (times > 0).then_some(RaisedBy {
                        format: p.format,
                        probe: p.label,
                        times,
                    })
                })
                .collect(),
        })
        .collect();
    Ok(Report { events, probes })
}

fn scratch_dir() -> Result<PathBuf, String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "blockfault-events-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The most events of one probe the text form lists in order.
const ORDER_SHOWN: usize = 80;

/// The text form: one block per event, then each probe's events in order.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    for e in &r.events {
        out.push_str(&format!(
            "{}\n  fires: {}\n  node:  {}\n",
            e.name, e.fires, e.node
        ));
        for f in [Format::Qcow2, Format::Raw] {
            let by: Vec<String> = e
                .raised_by
                .iter()
                .filter(|b| b.format == f)
                .map(|b| {
                    if b.times == 1 {
                        b.probe.to_string()
                    } else {
                        format!("{} (x{})", b.probe, b.times)
                    }
                })
                .collect();
            if !by.is_empty() {
                out.push_str(&format!("  {}: {}\n", f.name(), by.join("; ")));
            }
        }
    }
    out.push_str("\nEvents each command raises, in order:\n");
    for p in &r.probes {
        out.push_str(&format!(
            "\n{} {}: {}\n  {}\n",
            p.format.name(),
            p.label,
            p.commands.join("; "),
            if p.events.is_empty() {
                "(none)".to_string()
            } else if p.events.len() > ORDER_SHOWN {
                format!(
                    "{} ... and {} more (--json lists them all)",
                    p.events[..ORDER_SHOWN].join(" "),
                    p.events.len() - ORDER_SHOWN
                )
            } else {
                p.events.join(" ")
            }
        ));
    }
    out
}

pub fn json(r: &Report) -> String {
    let mut s = serde_json::to_string_pretty(r).expect("plain data");
    s.push('\n');
    s
}
