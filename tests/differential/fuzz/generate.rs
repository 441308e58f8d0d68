//! The random case generator. Every choice comes from the case's seed. Offsets and lengths are
//! biased toward the boundaries where block layers go wrong: sectors, clusters, blkdebug's
//! alignment and max-transfer, L2 slices and tables, and the end of the image.

use super::case::{Command, Format, FuzzCase, Image, Layer, Rule, Rules, Tok};
use super::rng::Rng;
use blockfault::block::blkdebug::events::Event;

const CACHE_MODES: [&str; 5] = ["none", "writeback", "writethrough", "directsync", "unsafe"];
const TAGS: [&str; 3] = ["A", "B", "C"];
const IOTYPES: [&str; 6] = [
    "read",
    "write",
    "write-zeroes",
    "discard",
    "flush",
    "block-status",
];
/// Largest request length generated: enough for two 2 MiB clusters.
const MAX_LEN: u64 = 4 << 20;
/// Largest size a truncate may give a file whose bytes it writes (raw, preallocation).
const MAX_WRITTEN_SIZE: u64 = 16 << 20;

/// Events the generic block layer and the raw driver raise on blkdebug.
const RAW_EVENTS: [&str; 13] = [
    "read_aio",
    "write_aio",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "flush_to_os",
    "flush_to_disk",
    "none",
    "cor_write",
];

/// Events only qcow2 raises.
const QCOW2_EVENTS: [&str; 24] = [
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "write_compressed",
    "read_compressed",
    "cow_read",
    "cow_write",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cluster_alloc_space",
];

pub fn generate(seed: u64) -> FuzzCase {
    let mut g = Gen {
        rng: Rng::new(seed),
        size: 0,
        cluster: 0,
        align: 0,
        max_transfer: 0,
        format: Format::Raw,
        patterns: vec![0],
        breaks: Vec::new(),
    };
    let image = g.image();
    g.size = image.virtual_size();
    g.format = image.format;
    g.cluster = if image.format == Format::Qcow2 {
        image.cluster_size
    } else {
        0
    };
    let cache = if g.rng.chance(50) {
        None
    } else {
        Some(g.rng.pick(&CACHE_MODES))
    };
    let layer = g.layer(cache);
    g.align = layer.align();
    g.max_transfer = layer.max_transfer();
    let explicit_format = !g.rng.chance(12);
    let blkverify = !matches!(layer, Layer::Json { .. }) && g.rng.chance(10);
    let n = g.rng.range(1, 14);
    let commands = (0..n).map(|_| g.command(layer.has_blkdebug())).collect();
    FuzzCase {
        seed,
        image,
        explicit_format,
        layer,
        blkverify,
        cache,
        commands,
    }
}

/// Tiny clusters make big images slow to create, resize and check (seconds per qemu-io run
/// with 512-byte clusters and gigabytes): 128 Ki clusters at most.
fn max_qcow2_size(cluster_size: u64) -> u64 {
    cluster_size << 17
}

struct Gen {
    rng: Rng,
    /// the image's current virtual size (truncate changes it)
    size: u64,
    /// qcow2 cluster size, 0 for raw
    cluster: u64,
    align: u64,
    max_transfer: u64,
    format: Format,
    /// patterns written so far, for `read -P` checks that can pass
    patterns: Vec<u64>,
    /// tags of breakpoints set so far
    breaks: Vec<&'static str>,
}

impl Gen {
    fn image(&mut self) -> Image {
        let r = &mut self.rng;
        if r.chance(40) {
            let size = match r.weighted(&[3, 2, 2, 1, 1, 4, 3]) {
                0 => 1 << 20,
                1 => 64 << 10,
                2 => r.range(1, 8192) * 512,
                3 => r.pick(&[1000, 5120, 4097, 511]),
                4 => r.pick(&[0, 512]),
                5 => r.range(1, 4 << 20),
                _ => r.pick(&[4 << 20, 2 << 20, 128 << 10]),
            };
            Image {
                format: Format::Raw,
                size,
                cluster_size: 0,
                v3: false,
                lazy_refcounts: false,
                refcount_bits: 0,
            }
        } else {
            let bits = match r.weighted(&[3, 2, 4, 2, 5]) {
                0 => 9,
                1 => 12,
                2 => 16,
                3 => 21,
                _ => r.range(9, 21),
            };
            let cluster_size = 1u64 << bits;
            let size = match r.weighted(&[3, 2, 2, 2, 2, 1]) {
                0 => 1 << 20,
                1 => 64 << 20,
                2 => r.range(1, 32 << 20),
                3 => r.range(1, 64) * cluster_size.min(1 << 20),
                4 => r.pick(&[1000, 5120, 64 << 10, 16 << 20, 128 << 20]),
                _ => r.range(1, 1 << 20) * 512 * 16,
            };
            let v3 = !r.chance(30);
            Image {
                format: Format::Qcow2,
                size: size.min(max_qcow2_size(cluster_size)),
                cluster_size,
                v3,
                lazy_refcounts: v3 && r.chance(30),
                refcount_bits: if v3 && r.chance(25) {
                    1 << r.range(0, 6)
                } else {
                    0
                },
            }
        }
    }

    fn layer(&mut self, cache: Option<&str>) -> Layer {
        match self.rng.weighted(&[3, 3, 4]) {
            0 => Layer::Plain,
            1 => Layer::Legacy {
                config: (!self.rng.chance(20)).then(|| self.rules()),
            },
            _ => {
                let align = match self.rng.weighted(&[4, 2, 1, 3, 1]) {
                    0 => 0,
                    1 => 512,
                    2 => 1024,
                    3 => 4096,
                    _ => 1 << self.rng.range(9, 16),
                };
                // With O_DIRECT the file's own alignment (512 or 4096) joins blkdebug's.
                let direct = matches!(cache, Some("none" | "directsync"));
                let unit = align.max(if direct { 4096 } else { 1 });
                let max_transfer = if self.rng.chance(60) {
                    0
                } else if unit == 1 {
                    self.rng.pick(&[512, 1000, 4096, 65536, 3 * 512])
                } else {
                    unit * self.rng.pick(&[1, 2, 3, 4, 8, 16])
                };
                let (config, inline) = match self.rng.weighted(&[3, 1, 1, 1]) {
                    0 => (None, self.rules()),
                    1 => (Some(self.rules()), Rules::default()),
                    2 => (Some(self.rules()), self.rules()),
                    _ => (None, Rules::default()),
                };
                Layer::Json {
                    align,
                    max_transfer,
                    config,
                    inline,
                }
            }
        }
    }

    fn event(&mut self) -> Event {
        let name = match self.rng.weighted(&[5, 4, 2]) {
            0 => self.rng.pick(&RAW_EVENTS),
            1 if self.format == Format::Qcow2 => self.rng.pick(&QCOW2_EVENTS),
            1 => self.rng.pick(&["read_aio", "write_aio"]),
            _ => self.rng.pick(&Event::ALL).name(),
        };
        Event::from_name(name).expect("a known event name")
    }

    fn rules(&mut self) -> Rules {
        let inject = self.rng.weighted(&[1, 6, 3, 1]);
        let set_state = self.rng.weighted(&[6, 3, 1]);
        let mut rules = Vec::new();
        for _ in 0..inject {
            let rule = Rule::Inject {
                event: self.event(),
                state: if self.rng.chance(70) {
                    0
                } else {
                    self.rng.range(1, 3)
                },
                errno: match self.rng.weighted(&[4, 4, 2, 1, 1, 1, 1, 1]) {
                    0 => None,
                    1 => Some(5),
                    2 => Some(28),
                    3 => Some(0),
                    4 => Some(1),
                    5 => Some(22),
                    6 => Some(95),
                    _ => Some(self.rng.pick(&[12, 2, 13, 122, 1000])),
                },
                sector: if self.rng.chance(65) {
                    None
                } else {
                    Some(self.offset() / 512)
                },
                once: self.rng.chance(50),
                immediately: self.rng.chance(30),
                iotype: if self.rng.chance(75) {
                    None
                } else {
                    Some(self.rng.pick(&IOTYPES))
                },
            };
            rules.push(rule);
        }
        for _ in 0..set_state {
            rules.push(Rule::SetState {
                event: self.event(),
                state: if self.rng.chance(40) {
                    0
                } else {
                    self.rng.range(1, 3)
                },
                new_state: self.rng.range(1, 3),
            });
        }
        // Interleave, as a hand-written config would.
        for i in (1..rules.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            rules.swap(i, j);
        }
        Rules(rules)
    }

    /// Units whose multiples are interesting offsets.
    fn units(&self) -> Vec<u64> {
        let mut u = vec![512, 4096, 65536];
        if self.cluster != 0 {
            u.push(self.cluster);
            u.push(self.cluster);
            // L2 slice (4 KiB of entries) and whole L2 table coverage
            u.push((self.cluster.min(4096) / 8) * self.cluster);
            u.push((self.cluster / 8) * self.cluster);
        }
        if self.align != 0 {
            u.push(self.align);
            u.push(self.align);
        }
        if self.max_transfer != 0 {
            u.push(self.max_transfer);
        }
        u
    }

    fn jitter(&mut self, v: u64) -> u64 {
        let d = match self.rng.weighted(&[10, 2, 2, 1, 1, 1]) {
            0 => 0,
            1 => 1,
            2 => -1,
            3 => 512,
            4 => -512,
            _ => self.rng.range(1, 4095) as i64 - 2048,
        };
        v.saturating_add_signed(d)
    }

    fn offset(&mut self) -> u64 {
        let size = self.size;
        let base = match self.rng.weighted(&[2, 8, 2, 2, 2, 1]) {
            0 => 0,
            1 => {
                // units that fit in the image, mostly
                let mut units = self.units();
                if self.rng.chance(90) && units.iter().any(|&u| u <= size) {
                    units.retain(|&u| u <= size);
                }
                let unit = self.rng.pick(&units);
                let k = self.rng.below(size / unit + 2);
                k * unit
            }
            2 => size,
            3 => self.rng.below(size.max(1)),
            4 => self.rng.below(size.max(512) / 512) * 512,
            _ => size + self.rng.below(1 << 16),
        };
        self.jitter(base)
    }

    fn length(&mut self, offset: u64) -> u64 {
        let len = match self.rng.weighted(&[2, 3, 6, 3, 2, 2, 1]) {
            0 => self.rng.pick(&[1, 511, 513, 100, 4095, 4097]),
            1 => self.rng.pick(&[512, 1024, 4096, 65536]),
            2 => {
                let units = self.units();
                let unit = self.rng.pick(&units);
                self.rng.range(1, 4) * unit
            }
            3 => self.rng.range(1, 65536),
            4 => self.size.saturating_sub(offset),
            5 => {
                // to the next unit boundary, and a bit
                let units = self.units();
                let unit = self.rng.pick(&units);
                (offset / unit + 1) * unit - offset
            }
            _ => 0,
        };
        let len = if self.rng.chance(20) {
            self.jitter(len)
        } else {
            len
        };
        len.min(MAX_LEN)
    }

    fn pattern(&mut self) -> u64 {
        if self.rng.chance(70) {
            let p = self.rng.range(1, 255);
            self.patterns.push(p);
            p
        } else {
            self.rng.pick(&self.patterns)
        }
    }

    fn expected_pattern(&mut self) -> u64 {
        self.rng.pick(&self.patterns)
    }

    fn command(&mut self, blkdebug: bool) -> Command {
        let weights = [
            12,                                         // read
            14,                                         // write
            3,                                          // readv
            3,                                          // writev
            5,                                          // aio_read
            7,                                          // aio_write
            4,                                          // aio_flush
            4,                                          // flush
            4,                                          // discard
            3,                                          // truncate
            1,                                          // length
            1,                                          // info
            2,                                          // map
            2,                                          // alloc
            if blkdebug { 5 } else { 1 },               // break
            if self.breaks.is_empty() { 0 } else { 2 }, // wait_break
            if self.breaks.is_empty() { 0 } else { 4 }, // resume
            if self.breaks.is_empty() { 0 } else { 1 }, // remove_break
            1,                                          // reopen
            1,                                          // sleep
        ];
        match self.rng.weighted(&weights) {
            0 => self.read(),
            1 => self.write(),
            2 => self.vectored("readv"),
            3 => self.vectored("writev"),
            4 => self.vectored("aio_read"),
            5 => self.aio_write(),
            6 => Command::new("aio_flush", vec![]),
            7 => Command::new("flush", vec![]),
            8 => {
                let off = self.offset();
                let len = self.length(off);
                Command::new("discard", vec![Tok::Num(off), Tok::Num(len)])
            }
            9 => self.truncate(),
            10 => Command::new("length", vec![]),
            11 => Command::new("info", vec![]),
            12 => Command::new("map", vec![]),
            13 => {
                let off = self.offset();
                let mut args = vec![Tok::Num(off)];
                if self.rng.chance(70) {
                    args.push(Tok::Num(self.length(off)));
                }
                Command::new("alloc", args)
            }
            14 => {
                let tag = self.rng.pick(&TAGS);
                self.breaks.push(tag);
                Command::new(
                    "break",
                    vec![Tok::Word(self.event().name()), Tok::Word(tag)],
                )
            }
            15 => Command::new("wait_break", vec![Tok::Word(self.tag())]),
            16 => Command::new("resume", vec![Tok::Word(self.tag())]),
            17 => Command::new("remove_break", vec![Tok::Word(self.tag())]),
            18 => {
                let args = match self.rng.weighted(&[1, 1, 3, 1]) {
                    0 => vec![Tok::Flag("-r")],
                    1 => vec![Tok::Flag("-w")],
                    2 => vec![Tok::OptWord("-c", self.rng.pick(&CACHE_MODES))],
                    _ => vec![],
                };
                Command::new("reopen", args)
            }
            _ => Command::new("sleep", vec![Tok::Num(self.rng.range(0, 20))]),
        }
    }

    fn tag(&mut self) -> &'static str {
        if self.rng.chance(85) {
            self.rng.pick(&self.breaks)
        } else {
            self.rng.pick(&TAGS)
        }
    }

    /// `read -b` / `write -b`: the VM state area (qcow2), sector-aligned mostly.
    fn vmstate(&mut self, name: &'static str) -> Command {
        let mut off = self.offset();
        let mut len = self.length(off).min(1 << 20);
        if self.rng.chance(80) {
            off = off / 512 * 512;
            len = len.next_multiple_of(512);
        }
        let mut args = vec![Tok::Flag("-b")];
        if self.rng.chance(60) {
            args.push(Tok::Opt(
                "-P",
                if name == "write" {
                    self.pattern()
                } else {
                    self.expected_pattern()
                },
            ));
        }
        args.extend([Tok::Num(off), Tok::Num(len)]);
        Command::new(name, args)
    }

    fn read(&mut self) -> Command {
        if self.rng.chance(4) {
            return self.vmstate("read");
        }
        let off = self.offset();
        let mut len = self.length(off);
        let mut args = Vec::new();
        if self.rng.chance(40) {
            args.push(Tok::Opt("-P", self.expected_pattern()));
        }
        if self.rng.chance(5) {
            len = len.min(self.rng.range(1, 100));
            args.push(Tok::Flag("-v"));
        }
        if self.rng.chance(8) {
            args.push(Tok::Flag("-q"));
        }
        args.push(Tok::Num(off));
        args.push(Tok::Num(len));
        Command::new("read", args)
    }

    fn write(&mut self) -> Command {
        if self.rng.chance(4) {
            return self.vmstate("write");
        }
        let mut off = self.offset();
        let mut args = Vec::new();
        let mut len = None;
        match self.rng.weighted(&[12, 3, 2, 3]) {
            0 => args.push(Tok::Opt("-P", self.pattern())),
            1 => {
                args.push(Tok::Flag("-z"));
                if self.rng.chance(40) {
                    args.push(Tok::Flag("-u"));
                }
            }
            2 => {
                args.push(Tok::Flag("-c"));
                if self.cluster != 0 && self.rng.chance(80) {
                    off = off / self.cluster * self.cluster;
                    len = Some(self.rng.range(1, 3) * self.cluster);
                }
                if self.rng.chance(60) {
                    args.push(Tok::Opt("-P", self.pattern()));
                }
            }
            _ => {}
        }
        if !args.contains(&Tok::Flag("-c")) && self.rng.chance(15) {
            args.push(Tok::Flag("-f"));
        }
        if self.rng.chance(5) {
            args.push(Tok::Flag("-q"));
        }
        let len = len.unwrap_or_else(|| self.length(off)).min(MAX_LEN);
        args.push(Tok::Num(off));
        args.push(Tok::Num(len));
        Command::new("write", args)
    }

    fn aio_write(&mut self) -> Command {
        if self.rng.chance(20) {
            let off = self.offset();
            let len = self.length(off);
            let mut args = vec![Tok::Flag("-z")];
            if self.rng.chance(30) {
                args.push(Tok::Flag("-u"));
            }
            args.extend([Tok::Num(off), Tok::Num(len)]);
            Command::new("aio_write", args)
        } else {
            self.vectored("aio_write")
        }
    }

    /// readv, writev, aio_read or aio_write with one to four lengths.
    fn vectored(&mut self, name: &'static str) -> Command {
        let off = self.offset();
        let writes = name.contains("write");
        let mut args = Vec::new();
        if writes {
            if self.rng.chance(70) {
                args.push(Tok::Opt("-P", self.pattern()));
            }
            if self.rng.chance(15) {
                args.push(Tok::Flag("-f"));
            }
        } else if self.rng.chance(40) {
            args.push(Tok::Opt("-P", self.expected_pattern()));
        }
        if self.rng.chance(5) {
            args.push(Tok::Flag("-q"));
        }
        args.push(Tok::Num(off));
        let n = self.rng.weighted(&[0, 6, 2, 1, 1]);
        let mut total = 0;
        for _ in 0..n {
            let len = self.length(off + total).min(MAX_LEN / 4);
            total += len;
            args.push(Tok::Num(len));
        }
        Command::new(name, args)
    }

    fn truncate(&mut self) -> Command {
        let units = self.units();
        let unit = self.rng.pick(&units);
        let new = match self.rng.weighted(&[3, 3, 1, 2]) {
            0 => self.size + self.rng.range(1, 4) * unit,
            1 => self.size.saturating_sub(self.rng.range(1, 4) * unit),
            2 => 0,
            _ => {
                let v = self.rng.below(2 * self.size.max(1 << 20));
                self.jitter(v)
            }
        };
        let mut args = Vec::new();
        let mode = self
            .rng
            .chance(15)
            .then(|| self.rng.pick(&["off", "metadata", "falloc", "full"]));
        if let Some(m) = mode {
            args.push(Tok::OptWord("-m", m));
        }
        // Preallocation and raw growth write real bytes: keep the files small.
        let cap = if self.cluster != 0 && matches!(mode, None | Some("off")) {
            max_qcow2_size(self.cluster)
        } else {
            MAX_WRITTEN_SIZE
        };
        let new = new.min(cap);
        args.push(Tok::Num(new));
        self.size = new;
        Command::new("truncate", args)
    }
}
