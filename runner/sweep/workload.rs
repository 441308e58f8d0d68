//! What a sweep's workload does to the guest's data, so that the runner knows what every point
//! must read back: the commands it can track, their parsing, the attribution of qemu-io's output
//! to them, and the per-sector model of what may be found afterwards.

use blockfault::qemu_io::numbers::{cvtnum, parse_pattern};
use std::collections::BTreeMap;

pub const SECTOR: u64 = 512;

/// The pattern `write` uses without `-P` (qemu-io's default).
const DEFAULT_PATTERN: u8 = 0xcd;

/// A workload command the sweep understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub kind: Kind,
    /// `-b`: the VM state area rather than the disk
    pub vmstate: bool,
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `write` of one byte value (`-P`, the default pattern, or zeros with `-z`)
    Write(u8),
    /// `discard`: the old data or zeros (discard is advisory)
    Discard,
    /// `read`: changes nothing
    Read,
    /// `flush`: changes nothing and prints nothing
    Flush,
}

impl Command {
    /// The qemu-io command name whose result lines belong to this command.
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Write(_) => "write",
            Kind::Discard => "discard",
            Kind::Read => "read",
            Kind::Flush => "flush",
        }
    }

    /// The first word of its success line.
    fn done_word(&self) -> &'static str {
        match self.kind {
            Kind::Write(_) => "wrote ",
            Kind::Discard => "discard ",
            Kind::Read => "read ",
            Kind::Flush => "",
        }
    }

    pub fn changes_data(&self) -> bool {
        matches!(self.kind, Kind::Write(_) | Kind::Discard)
    }
}

/// Parses one workload command; the error says what the sweep accepts.
pub fn parse(text: &str) -> Result<Command, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let Some((&name, args)) = words.split_first() else {
        return Err("an empty command".into());
    };
    let (mut pattern, mut zero, mut vmstate) = (None, false, false);
    let mut positional = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i];
        i += 1;
        if !a.starts_with('-') || a == "-" {
            positional.push(a);
            continue;
        }
        match (name, a) {
            ("write" | "read", "-P") => {
                let Some(p) = args.get(i) else {
                    return Err(format!("`{text}`: -P needs a pattern"));
                };
                i += 1;
                pattern = Some(parse_pattern(p).map_err(|e| format!("`{text}`: {e}"))?);
            }
            ("write", "-z") => zero = true,
            ("write" | "read", "-b") => vmstate = true,
            // compressed, FUA, unmap with -z: the data read back are the same
            ("write", "-c" | "-f" | "-u") => {}
            _ => {
                return Err(format!(
                    "`{text}`: the sweep tracks `write [-bcfuz] [-P pattern] off len`, `read [-b] [-P pattern] off len`, `discard off len` and `flush`; not `{a}` here"
                ));
            }
        }
    }
    let kind = match name {
        "write" if zero && pattern.is_some() => {
            return Err(format!("`{text}`: -z and -P do not go together"));
        }
        "write" => Kind::Write(if zero {
            0
        } else {
            pattern.unwrap_or(DEFAULT_PATTERN)
        }),
        "read" => Kind::Read,
        "discard" => Kind::Discard,
        "flush" => Kind::Flush,
        other => {
            return Err(format!(
                "`{other}` is not a command the sweep can track (write, read, discard, flush; one request each, no aliases)"
            ));
        }
    };
    if kind == Kind::Flush {
        if !args.is_empty() {
            return Err(format!("`{text}`: flush takes no arguments"));
        }
        return Ok(Command {
            kind,
            vmstate: false,
            offset: 0,
            len: 0,
        });
    }
    let [off, len] = positional[..] else {
        return Err(format!("`{text}`: expected an offset and a length"));
    };
    let number = |s: &str| {
        cvtnum(s)
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| format!("`{text}`: `{s}` is not a byte count"))
    };
    let (offset, len) = (number(off)?, number(len)?);
    if len == 0 || len > 64 << 20 {
        return Err(format!(
            "`{text}`: the sweep tracks requests of 1 byte to 64 MiB"
        ));
    }
    Ok(Command {
        kind,
        vmstate,
        offset,
        len,
    })
}

/// How one command of a run ended, from qemu-io's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Done,
    Failed(String),
    /// No line of its own: `flush`, or the run stopped before it.
    Unknown,
}

/// qemu-io's output split among the commands: each command's result line, where it starts in
/// the output (a byte offset), and the lines no command printed (close-time errors, ...).
#[derive(Clone, Debug, Default)]
pub struct Attribution {
    pub status: Vec<Status>,
    /// byte offset of each command's result line, None without one
    pub at: Vec<Option<usize>>,
    /// (index of the command it follows, or None before the first, line)
    pub stray: Vec<(Option<usize>, String)>,
}

/// Walks the output in order: the next command's result line, the statistics line after a
/// success, anything else stray.
pub fn attribute(commands: &[Command], output: &str) -> Attribution {
    let mut a = Attribution {
        status: vec![Status::Unknown; commands.len()],
        at: vec![None; commands.len()],
        stray: Vec::new(),
    };
    let mut next = 0;
    let mut last: Option<usize> = None;
    let mut expect_stats = false;
    let mut offset = 0;
    for line in output.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let line = line.trim_end_matches('\n');
        if expect_stats {
            expect_stats = false;
            if line.contains(" ops; ") {
                continue;
            }
        }
        while next < commands.len() && commands[next].kind == Kind::Flush {
            next += 1;
        }
        if let Some(c) = commands.get(next) {
            if line.starts_with(c.done_word()) {
                a.status[next] = Status::Done;
                a.at[next] = Some(start);
                last = Some(next);
                next += 1;
                expect_stats = true;
                continue;
            }
            if let Some(e) = line.strip_prefix(&format!("{} failed: ", c.name())) {
                a.status[next] = Status::Failed(e.to_string());
                a.at[next] = Some(start);
                last = Some(next);
                next += 1;
                continue;
            }
        }
        a.stray.push((last, line.to_string()));
    }
    a
}

/// One sector's possible contents, deduplicated.
pub type Candidates = Vec<Vec<u8>>;

/// The most contents one sector may have before the model stops checking it.
const MAX_CANDIDATES: usize = 64;

/// Sector (vmstate?, index) -> what it may hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub sectors: BTreeMap<(bool, u64), Candidates>,
}

/// What a command did, as far as the checks may assume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// its data must be there
    Applied,
    /// each sector holds the old or the new data
    Maybe,
    /// it cannot have touched anything
    None,
}

impl Model {
    /// The sectors the commands touch, holding `old` (vmstate?, offset -> bytes read before
    /// the workload).
    pub fn new(old: &BTreeMap<(bool, u64), Vec<u8>>) -> Model {
        Model {
            sectors: old.iter().map(|(k, v)| (*k, vec![v.clone()])).collect(),
        }
    }

    pub fn apply(&mut self, c: &Command, effect: Effect) {
        if effect == Effect::None || !c.changes_data() {
            return;
        }
        for sector in c.offset / SECTOR..(c.offset + c.len).div_ceil(SECTOR) {
            let Some(cands) = self.sectors.get_mut(&(c.vmstate, sector)) else {
                continue;
            };
            let base = sector * SECTOR;
            let from = c.offset.max(base) - base;
            let to = (c.offset + c.len).min(base + SECTOR) - base;
            let written = |old: &Vec<u8>, byte: u8| {
                let mut new = old.clone();
                new[from as usize..to as usize].fill(byte);
                new
            };
            let mut next: Candidates = Vec::new();
            for old in cands.iter() {
                match (c.kind, effect) {
                    (Kind::Write(b), Effect::Applied) => next.push(written(old, b)),
                    (Kind::Write(b), _) => {
                        next.push(old.clone());
                        next.push(written(old, b));
                    }
                    // Discard may keep the data even when it succeeds.
                    _ => {
                        next.push(old.clone());
                        next.push(written(old, 0));
                    }
                }
            }
            next.sort();
            next.dedup();
            if next.len() > MAX_CANDIDATES {
                // Too many ways to be right: stop checking this sector rather than guess.
                self.sectors.remove(&(c.vmstate, sector));
            } else {
                *cands = next;
            }
        }
    }

    /// The byte ranges to read back (vmstate?, offset, length), merged.
    pub fn ranges(commands: &[Command]) -> Vec<(bool, u64, u64)> {
        let mut sectors: Vec<(bool, u64)> = commands
            .iter()
            .filter(|c| c.changes_data())
            .flat_map(|c| {
                (c.offset / SECTOR..(c.offset + c.len).div_ceil(SECTOR)).map(|s| (c.vmstate, s))
            })
            .collect();
        sectors.sort();
        sectors.dedup();
        let mut out: Vec<(bool, u64, u64)> = Vec::new();
        for (vm, s) in sectors {
            match out.last_mut() {
                Some((v, o, l)) if *v == vm && *o + *l == s * SECTOR => *l += SECTOR,
                _ => out.push((vm, s * SECTOR, SECTOR)),
            }
        }
        out
    }

    /// The sectors that hold none of their possible contents, described.
    pub fn mismatches(&self, found: &BTreeMap<(bool, u64), Vec<u8>>) -> Vec<String> {
        let mut out = Vec::new();
        for (key @ (vm, sector), cands) in &self.sectors {
            let area = if *vm { "vmstate " } else { "" };
            match found.get(key) {
                None => out.push(format!(
                    "{area}sector at {:#x}: not read back",
                    sector * SECTOR
                )),
                Some(data) if !cands.contains(data) => out.push(format!(
                    "{area}sector at {:#x} holds {}, expected {}",
                    sector * SECTOR,
                    describe(data),
                    cands
                        .iter()
                        .map(|c| describe(c))
                        .collect::<Vec<_>>()
                        .join(" or ")
                )),
                Some(_) => {}
            }
        }
        out
    }
}

/// A sector's contents in a few characters: `cd*512` when uniform, else the first bytes.
fn describe(data: &[u8]) -> String {
    match data.first() {
        Some(&b) if data.iter().all(|&x| x == b) => format!("{b:02x}*{}", data.len()),
        _ => {
            let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
            format!("{}...", head.join(" "))
        }
    }
}

/// The `read -v` commands that read `ranges` back.
pub fn read_commands(ranges: &[(bool, u64, u64)]) -> Vec<String> {
    ranges
        .iter()
        .map(|(vm, o, l)| format!("read -v{} {o} {l}", if *vm { " -b" } else { "" }))
        .collect()
}

/// Parses `read -v` dumps (one per range, in order) back into sectors; an error names the read
/// that failed.
pub fn parse_dumps(
    ranges: &[(bool, u64, u64)],
    output: &str,
) -> Result<BTreeMap<(bool, u64), Vec<u8>>, String> {
    // Per range: its bytes, and which of them a dump line gave.
    let mut bytes: Vec<(Vec<u8>, Vec<bool>)> = ranges
        .iter()
        .map(|(_, _, len)| (vec![0; *len as usize], vec![false; *len as usize]))
        .collect();
    let mut which = 0;
    for line in output.lines() {
        if let Some(e) = line.strip_prefix("read failed: ") {
            return Err(format!("reading back failed: {e}"));
        }
        if line.starts_with("read ") {
            which += 1;
            continue;
        }
        let Some((addr, rest)) = line.split_once(":  ") else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        let (Some((data, seen)), Some((_, start, _))) = (bytes.get_mut(which), ranges.get(which))
        else {
            return Err(format!("unexpected output from the read-back: {line}"));
        };
        for (i, b) in rest.as_bytes().chunks(3).enumerate() {
            if b.len() < 3 || b[2] != b' ' {
                break;
            }
            let Some(v) = std::str::from_utf8(&b[..2])
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
            else {
                break;
            };
            let at = (addr + i as u64).checked_sub(*start).map(|a| a as usize);
            match at {
                Some(a) if a < data.len() => {
                    data[a] = v;
                    seen[a] = true;
                }
                _ => return Err(format!("unexpected output from the read-back: {line}")),
            }
        }
    }
    let mut out = BTreeMap::new();
    for ((vm, offset, len), (data, seen)) in ranges.iter().zip(&bytes) {
        for s in 0..len / SECTOR {
            let span = (s * SECTOR) as usize..((s + 1) * SECTOR) as usize;
            if !seen[span.clone()].iter().all(|&x| x) {
                return Err(format!(
                    "the read-back of {}sector {:#x} is incomplete",
                    if *vm { "vmstate " } else { "" },
                    offset + s * SECTOR
                ));
            }
            out.insert((*vm, offset / SECTOR + s), data[span].to_vec());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands_it_tracks() {
        assert_eq!(
            parse("write -P 0x41 -b 512 1k").unwrap(),
            Command {
                kind: Kind::Write(0x41),
                vmstate: true,
                offset: 512,
                len: 1024
            }
        );
        assert_eq!(parse("write 0 128k").unwrap().kind, Kind::Write(0xcd));
        assert_eq!(parse("write -z -u 0 4k").unwrap().kind, Kind::Write(0));
        assert_eq!(parse("discard 0 4k").unwrap().kind, Kind::Discard);
        assert_eq!(parse("flush").unwrap().kind, Kind::Flush);
        assert!(
            parse("aio_write 0 4k")
                .unwrap_err()
                .contains("not a command")
        );
        assert!(parse("write -q 0 4k").unwrap_err().contains("not `-q`"));
        assert!(
            parse("write 0")
                .unwrap_err()
                .contains("an offset and a length")
        );
        assert!(parse("write -z -P 1 0 1").is_err());
    }

    #[test]
    fn output_is_attributed_in_order() {
        let cmds = [
            parse("write 0 512").unwrap(),
            parse("flush").unwrap(),
            parse("write 512 512").unwrap(),
        ];
        let out = "wrote 512/512 bytes at offset 0\n512 bytes, X ops; stats\n\
                   write failed: Input/output error\n\
                   qemu-io: Failed to flush the L2 table cache: Input/output error\n";
        let a = attribute(&cmds, out);
        assert_eq!(
            a.status,
            [
                Status::Done,
                Status::Unknown,
                Status::Failed("Input/output error".into())
            ]
        );
        assert_eq!(a.at[2], Some(out.find("write failed").unwrap()));
        assert_eq!(a.stray.len(), 1);
        assert_eq!(a.stray[0].0, Some(2));
    }

    #[test]
    fn failed_writes_leave_old_or_new_per_sector() {
        let cmds = [parse("write -P 1 256 512").unwrap()];
        let ranges = Model::ranges(&cmds);
        assert_eq!(ranges, [(false, 0, 1024)]);
        let old = BTreeMap::from([((false, 0), vec![0u8; 512]), ((false, 1), vec![0u8; 512])]);
        let mut m = Model::new(&old);
        m.apply(&cmds[0], Effect::Maybe);
        let mut found = old.clone();
        assert!(m.mismatches(&found).is_empty());
        found.get_mut(&(false, 0)).unwrap()[300] = 1;
        assert_eq!(m.mismatches(&found).len(), 1);
        let mut applied = Model::new(&old);
        applied.apply(&cmds[0], Effect::Applied);
        assert_eq!(applied.mismatches(&old).len(), 2);
    }

    #[test]
    fn dumps_parse_back_into_sectors() {
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 251) as u8).collect();
        let dump = format!(
            "{}read 1024/1024 bytes at offset 0\n1 KiB, X ops; stats\n",
            blockfault::qemu_io::format::dump_buffer(&data, 0)
        );
        let got = parse_dumps(&[(false, 0, 1024)], &dump).unwrap();
        assert_eq!(got[&(false, 1)], data[512..]);
        assert!(parse_dumps(&[(false, 0, 512)], "read failed: Input/output error\n").is_err());
    }
}
