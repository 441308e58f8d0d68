//! Point ids: the name a sweep prints for each point, which `--point ID` takes back to replay
//! that point alone.
//!
//! - `EVENT#N/errno=E/MODE`: fail the N-th occurrence of blkdebug event EVENT with errno E,
//!   once or sticky (`l2_update#2/errno=28/sticky`).
//! - Faults joined by `+` (a random run): each one's N counts the occurrences of its event
//!   after the previous fault's occurrence (`l2_update#1/errno=5/once+pwritev#3/errno=5/once`).
//! - `clean`: the workload without faults.
//! - `crash@P`, `crash@P-D-D`, `crash@P/T`: the power cut after log entry P, entries D lost,
//!   the newest write torn after T bytes (see `CrashState::label`).

use crate::sweep_spec::Mode;
use blockfault::block::blkdebug::events::Event;
use std::fmt::Write as _;

/// One injected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub event: Event,
    pub occurrence: u64,
    pub errno: u32,
    pub mode: Mode,
}

impl Fault {
    pub fn id(&self) -> String {
        format!(
            "{}#{}/errno={}/{}",
            self.event,
            self.occurrence,
            self.errno,
            self.mode.name()
        )
    }

    fn parse(text: &str) -> Result<Fault, String> {
        let bad = || {
            format!(
                "`{text}` is not a fault id (EVENT#N/errno=E/once|sticky, e.g. l2_update#1/errno=5/once)"
            )
        };
        let (event, rest) = text.split_once('#').ok_or_else(bad)?;
        let mut parts = rest.split('/');
        let (Some(n), Some(errno), Some(mode), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let event = Event::from_name(event)
            .ok_or_else(|| format!("`{event}` in `{text}` is not a blkdebug event"))?;
        let occurrence = n.parse().ok().filter(|&n| n >= 1).ok_or_else(bad)?;
        let errno = errno
            .strip_prefix("errno=")
            .and_then(|e| e.parse().ok())
            .filter(|e| (1..=4095).contains(e))
            .ok_or_else(bad)?;
        let mode = match mode {
            "once" => Mode::Once,
            "sticky" => Mode::Sticky,
            _ => return Err(bad()),
        };
        Ok(Fault {
            event,
            occurrence,
            errno,
            mode,
        })
    }
}

/// A point named on the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Point {
    /// No faults (`clean`) or these, in order.
    Faults(Vec<Fault>),
    /// A crash state's label (`@12-3/1024`), found among the sweep's states.
    Crash(String),
}

pub fn parse(id: &str) -> Result<Point, String> {
    if id == "clean" {
        return Ok(Point::Faults(Vec::new()));
    }
    if let Some(label) = id.strip_prefix("crash") {
        return Ok(Point::Crash(label.to_string()));
    }
    id.split('+')
        .map(Fault::parse)
        .collect::<Result<_, _>>()
        .map(Point::Faults)
}

pub fn faults_id(faults: &[Fault]) -> String {
    if faults.is_empty() {
        return "clean".into();
    }
    faults.iter().map(Fault::id).collect::<Vec<_>>().join("+")
}

/// The blkdebug rules for `faults`: one set-state chain counting the occurrences (each fault's
/// chain starts in the state the previous one ended in, so a later fault counts from the
/// earlier one's occurrence on) and an inject-error rule on each fault's last state.
pub fn rules(faults: &[Fault]) -> String {
    let mut s = String::new();
    let mut start = 1;
    for f in faults {
        let once = if f.mode == Mode::Once { "on" } else { "off" };
        let _ = write!(
            s,
            "[inject-error]\nevent = \"{}\"\nstate = \"{}\"\nerrno = \"{}\"\nonce = \"{once}\"\n",
            f.event,
            start + f.occurrence - 1,
            f.errno
        );
        for k in start..start + f.occurrence {
            let _ = write!(
                s,
                "[set-state]\nevent = \"{}\"\nstate = \"{k}\"\nnew_state = \"{}\"\n",
                f.event,
                k + 1
            );
        }
        start += f.occurrence;
    }
    s
}

/// SplitMix64: a small, well-mixed generator; the same seed draws the same faults on every
/// machine and every version.
pub struct Rng(u64);

impl Rng {
    /// The generator of run `run` of seed `seed`: each run draws on its own, so one run's
    /// faults do not depend on how many runs came before it.
    pub fn for_run(seed: u64, run: usize) -> Rng {
        let mut r = Rng(seed);
        let mixed = r.next() ^ (run as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        Rng(mixed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0; the bias of the modulo is negligible for the small n drawn).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        for id in [
            "l2_update#1/errno=5/once",
            "pwritev_done#3/errno=28/sticky+write_aio#2/errno=5/once",
            "clean",
        ] {
            let Point::Faults(f) = parse(id).unwrap() else {
                panic!()
            };
            assert_eq!(faults_id(&f), id);
        }
        assert_eq!(
            parse("crash@12-3/1024"),
            Ok(Point::Crash("@12-3/1024".into()))
        );
        assert!(parse("l2_update#0/errno=5/once").is_err());
        assert!(
            parse("l2_updat#1/errno=5/once")
                .unwrap_err()
                .contains("not a blkdebug event")
        );
        assert!(parse("l2_update#1/5/once").is_err());
    }

    #[test]
    fn later_faults_chain_from_the_earlier_ones() {
        let Point::Faults(f) = parse("l2_update#2/errno=5/once+pwritev#1/errno=28/sticky").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            rules(&f),
            "[inject-error]\nevent = \"l2_update\"\nstate = \"2\"\nerrno = \"5\"\nonce = \"on\"\n\
             [set-state]\nevent = \"l2_update\"\nstate = \"1\"\nnew_state = \"2\"\n\
             [set-state]\nevent = \"l2_update\"\nstate = \"2\"\nnew_state = \"3\"\n\
             [inject-error]\nevent = \"pwritev\"\nstate = \"3\"\nerrno = \"28\"\nonce = \"off\"\n\
             [set-state]\nevent = \"pwritev\"\nstate = \"3\"\nnew_state = \"4\"\n"
        );
    }

    #[test]
    fn runs_draw_the_same_numbers_for_the_same_seed() {
        let a: Vec<u64> = (0..4).map(|_| Rng::for_run(42, 7).next()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::for_run(42, 7).next(), Rng::for_run(42, 8).next());
        assert_ne!(Rng::for_run(42, 7).next(), Rng::for_run(43, 7).next());
    }
}
