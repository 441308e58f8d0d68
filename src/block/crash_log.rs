//! A model of a volatile disk write cache, for crash (power-cut) sweeps.
//!
//! When recording is on (per thread: each scenario runs on one thread), the file driver logs
//! every change it makes to a host file (writes, zero writes, discards, truncations) and every
//! flush that reached the disk (fdatasync, FUA). A change is durable only once a later flush has
//! completed; a power cut keeps every change before the last completed flush and any subset of
//! those after it. [`crash_states`] enumerates the subsets a sweep tries (in-order prefixes
//! always; bounded reorderings and torn writes on request) and [`CrashState::apply`] rebuilds
//! the files as they would be found after the cut, from copies taken before the workload.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The unit a torn write is cut at: disks promise sector atomicity, nothing more.
pub const SECTOR: u64 = 512;

/// One change the file driver made, or one flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    /// write-zeroes or a discard (a punched hole reads back as zeros)
    Zero {
        offset: u64,
        len: u64,
    },
    Truncate {
        size: u64,
    },
    Flush,
}

/// One entry of the log: which host file (as the driver resolved it) and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub op: Op,
}

thread_local! {
    static LOG: RefCell<Option<Vec<Entry>>> = const { RefCell::new(None) };
}

/// Starts recording on this thread (a log already being recorded is dropped).
pub fn start() {
    LOG.with(|l| *l.borrow_mut() = Some(Vec::new()));
}

/// Stops recording and returns the log (empty if recording was off).
pub fn finish() -> Vec<Entry> {
    LOG.with(|l| l.borrow_mut().take()).unwrap_or_default()
}

/// How many entries the log holds so far (0 when recording is off): a position that output
/// printed now can be tied to.
pub fn position() -> usize {
    LOG.with(|l| l.borrow().as_ref().map_or(0, Vec::len))
}

/// Whether recording is on: the driver skips copying data otherwise.
pub fn recording() -> bool {
    LOG.with(|l| l.borrow().is_some())
}

/// Logs one change or flush of `path`, if recording is on.
pub fn record(path: &Path, op: Op) {
    LOG.with(|l| {
        if let Some(log) = l.borrow_mut().as_mut() {
            log.push(Entry {
                path: path.to_path_buf(),
                op,
            });
        }
    });
}

/// Which crash states a sweep tries besides the in-order prefixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Also drop up to this many of the changes since the last flush (never the newest one: a
    /// state without it is a shorter prefix's state), as CrashMonkey bounds its reorderings.
    pub reorder: usize,
    /// Also cut the newest change, when it is a write of more than one sector, after each of
    /// at most this many sector boundaries, spread evenly over it.
    pub torn: usize,
}

/// One power cut: the first `point` entries were issued; `dropped` of them (all after the last
/// flush among them) were lost; the newest may be torn, keeping only its first `torn` bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashState {
    pub point: usize,
    pub dropped: Vec<usize>,
    pub torn: Option<u64>,
}

impl CrashState {
    /// A short name for the golden: `@12`, `@12-3-5` (entries 3 and 5 lost), `@12/1024` (the
    /// newest write torn after 1024 bytes).
    pub fn label(&self) -> String {
        let mut s = format!("@{}", self.point);
        for d in &self.dropped {
            s.push_str(&format!("-{d}"));
        }
        if let Some(t) = self.torn {
            s.push_str(&format!("/{t}"));
        }
        s
    }

    /// Applies the kept changes, in order, to `files` (path -> contents before the workload; a
    /// file the log names but `files` lacks starts empty).
    pub fn apply(&self, log: &[Entry], files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for (i, e) in log[..self.point].iter().enumerate() {
            if self.dropped.contains(&i) {
                continue;
            }
            let torn = (i + 1 == self.point).then_some(self.torn).flatten();
            let file = files.entry(e.path.clone()).or_default();
            match &e.op {
                Op::Write { offset, data } => {
                    let keep = torn.map_or(data.len(), |t| t as usize);
                    put(file, *offset, &data[..keep]);
                }
                Op::Zero { offset, len } => {
                    let end = (offset + len).min(file.len() as u64);
                    if *offset < end {
                        file[*offset as usize..end as usize].fill(0);
                    }
                }
                Op::Truncate { size } => file.resize(*size as usize, 0),
                Op::Flush => {}
            }
        }
    }
}

fn put(file: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[offset as usize..end].copy_from_slice(data);
}

/// Every crash state of `log` within `bounds`, in order of the cut's point: for each point 0..=N
/// the in-order prefix, then its reorderings (ascending sets of dropped entries), then its
/// torn variants.
pub fn crash_states(log: &[Entry], bounds: Bounds) -> Vec<CrashState> {
    let mut out = Vec::new();
    let mut epoch_start = 0;
    for point in 0..=log.len() {
        out.push(CrashState {
            point,
            dropped: Vec::new(),
            torn: None,
        });
        if point == 0 {
            continue;
        }
        let newest = point - 1;
        if log[newest].op == Op::Flush {
            epoch_start = point;
            continue;
        }
        // Changes since the last flush, the newest excepted: the candidates to lose.
        let candidates: Vec<usize> = (epoch_start..newest).collect();
        for k in 1..=bounds.reorder.min(candidates.len()) {
            for_each_combination(&candidates, k, &mut |dropped| {
                out.push(CrashState {
                    point,
                    dropped: dropped.to_vec(),
                    torn: None,
                });
            });
        }
        if let Op::Write { data, .. } = &log[newest].op {
            for cut in tear_points(data.len() as u64, bounds.torn) {
                out.push(CrashState {
                    point,
                    dropped: Vec::new(),
                    torn: Some(cut),
                });
            }
        }
    }
    out
}

/// Up to `most` sector boundaries strictly inside a write of `len` bytes, spread evenly.
fn tear_points(len: u64, most: usize) -> Vec<u64> {
    let inner = len.div_ceil(SECTOR).saturating_sub(1);
    if inner == 0 || most == 0 {
        return Vec::new();
    }
    let n = inner.min(most as u64);
    // The i-th of n cuts falls at sector ceil(i * (inner + 1) / (n + 1)), 1 <= it <= inner.
    let mut cuts: Vec<u64> = (1..=n)
        .map(|i| (i * (inner + 1)).div_ceil(n + 1).clamp(1, inner) * SECTOR)
        .collect();
    cuts.dedup();
    cuts
}

fn for_each_combination(items: &[usize], k: usize, f: &mut impl FnMut(&[usize])) {
    fn go(
        items: &[usize],
        k: usize,
        start: usize,
        chosen: &mut Vec<usize>,
        f: &mut impl FnMut(&[usize]),
    ) {
        if chosen.len() == k {
            f(chosen);
            return;
        }
        for i in start..items.len() {
            if items.len() - i < k - chosen.len() {
                break;
            }
            chosen.push(items[i]);
            go(items, k, i + 1, chosen, f);
            chosen.pop();
        }
    }
    go(items, k, 0, &mut Vec::new(), f);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(offset: u64, byte: u8, len: usize) -> Entry {
        Entry {
            path: "f".into(),
            op: Op::Write {
                offset,
                data: vec![byte; len],
            },
        }
    }

    fn flush() -> Entry {
        Entry {
            path: "f".into(),
            op: Op::Flush,
        }
    }

    #[test]
    fn recording_is_per_thread_and_off_by_default() {
        record(Path::new("x"), Op::Flush);
        assert_eq!(position(), 0);
        start();
        record(Path::new("x"), Op::Flush);
        assert_eq!(position(), 1);
        std::thread::spawn(|| assert!(!recording())).join().unwrap();
        assert_eq!(finish().len(), 1);
        assert!(!recording());
    }

    #[test]
    fn prefixes_cover_every_point() {
        let log = [w(0, 1, 512), flush(), w(512, 2, 512)];
        let labels: Vec<String> = crash_states(&log, Bounds::default())
            .iter()
            .map(CrashState::label)
            .collect();
        assert_eq!(labels, ["@0", "@1", "@2", "@3"]);
    }

    #[test]
    fn reorderings_drop_only_unflushed_changes_and_keep_the_newest() {
        let log = [
            w(0, 1, 512),
            flush(),
            w(512, 2, 512),
            w(1024, 3, 512),
            w(0, 4, 512),
        ];
        let states = crash_states(
            &log,
            Bounds {
                reorder: 2,
                torn: 0,
            },
        );
        let labels: Vec<String> = states.iter().map(CrashState::label).collect();
        assert_eq!(
            labels,
            [
                "@0", "@1", "@2", "@3", "@4", "@4-2", "@5", "@5-2", "@5-3", "@5-2-3"
            ]
        );
        let mut files = BTreeMap::from([(PathBuf::from("f"), vec![9u8; 1536])]);
        states[7].apply(&log, &mut files);
        let f = &files[Path::new("f")];
        assert_eq!((f[0], f[512], f[1024]), (4, 9, 3));
    }

    #[test]
    fn torn_writes_keep_a_sector_aligned_prefix() {
        assert_eq!(tear_points(512, 4), Vec::<u64>::new());
        assert_eq!(tear_points(2048, 8), [512, 1024, 1536]);
        assert_eq!(tear_points(8 * 512, 1), [4 * 512]);
        assert_eq!(tear_points(1000, 3), [512]);
        let log = [w(0, 7, 2048)];
        let states = crash_states(
            &log,
            Bounds {
                reorder: 0,
                torn: 1,
            },
        );
        assert_eq!(states.last().unwrap().label(), "@1/1024");
        let mut files = BTreeMap::new();
        states.last().unwrap().apply(&log, &mut files);
        assert_eq!(files[Path::new("f")], vec![7u8; 1024]);
    }

    #[test]
    fn zeroes_and_truncation_replay() {
        let log = [
            w(0, 5, 1024),
            Entry {
                path: "f".into(),
                op: Op::Zero {
                    offset: 512,
                    len: 4096,
                },
            },
            Entry {
                path: "f".into(),
                op: Op::Truncate { size: 2048 },
            },
        ];
        let mut files = BTreeMap::new();
        CrashState {
            point: 3,
            dropped: vec![],
            torn: None,
        }
        .apply(&log, &mut files);
        let f = &files[Path::new("f")];
        assert_eq!(f.len(), 2048);
        assert_eq!((f[0], f[511], f[512], f[1023]), (5, 5, 0, 0));
    }
}
