//! The `sweep:` part of the scenario format, and the rules serde cannot express (the runner
//! itself is in sweep.rs): kept apart so that the scenario reader compiles on its own (the
//! engine tests include it).

#[path = "sweep/workload.rs"]
pub mod workload;

use blockfault::block::blkdebug::events::Event;
use schemars::JsonSchema;
use serde::Deserialize;

/// `sweep:`: what to run, what to inject or cut, what to check.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The workload: one qemu-io process on one image.
    pub workload: Workload,
    /// Fail every occurrence of these blkdebug events in turn (both backends).
    #[serde(default)]
    pub faults: Option<Faults>,
    /// Cut the power at every point of the workload's disk writes (builtin engine only).
    #[serde(default)]
    pub crash: Option<Crash>,
    /// More qemu-io commands run on the image after every point (besides the built-in checks:
    /// `qemu-img check` and reading back what the workload wrote); a point fails if they exit
    /// with a non-zero status.
    #[serde(default)]
    pub checks: Vec<String>,
}

/// `sweep.workload`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// The image file, relative to the scratch directory (made by `images:` or earlier steps).
    pub image: String,
    /// Its format, as qemu-io's `-f`.
    pub format: String,
    /// As qemu-io's `-t` (default: qemu-io's, writeback).
    #[serde(default)]
    pub cache: Option<String>,
    /// The qemu-io commands, in order: `write [-bcfuz] [-P pattern] off len`, `read [-b] [-P
    /// pattern] off len`, `discard off len`, `flush`.
    pub commands: Vec<String>,
}

/// `sweep.faults`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// `all` or a list of blkdebug event names.
    pub events: EventChoice,
    /// The errno values to inject (default: 5, EIO).
    #[serde(default = "default_errno")]
    pub errno: Vec<u32>,
    /// `once` (blkdebug's once=on: only the request after the occurrence fails) and/or `sticky`
    /// (once=off: every request from then on fails). Default: once.
    #[serde(default = "default_mode")]
    pub mode: Vec<Mode>,
    /// Instead of every point one at a time: `runs` runs, each failing up to `faults` points
    /// drawn from `seed` (an event occurrence, an errno and a mode each).
    #[serde(default)]
    pub random: Option<Random>,
}

/// `sweep.faults.random`: seeded random faults, the same runs for the same seed.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Random {
    /// How many runs.
    pub runs: usize,
    /// The seed every run's faults are drawn from.
    pub seed: u64,
    /// The most faults one run injects (default 3): each run draws 1 to this many.
    #[serde(default = "default_faults_per_run")]
    pub faults: usize,
}

fn default_faults_per_run() -> usize {
    3
}

/// The most random runs a sweep takes (each is a qemu-io run and its checks).
const MAX_RANDOM_RUNS: usize = 100_000;

fn default_errno() -> Vec<u32> {
    vec![5]
}

fn default_mode() -> Vec<Mode> {
    vec![Mode::Once]
}

/// `all`, or the events named.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(with = "EventChoiceRepr")]
pub enum EventChoice {
    All,
    List(Vec<String>),
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged, expecting = "`all` or a list of blkdebug event names")]
enum EventChoiceRepr {
    All(AllWord),
    List(Vec<String>),
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum AllWord {
    All,
}

impl<'de> Deserialize<'de> for EventChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match EventChoiceRepr::deserialize(d)? {
            EventChoiceRepr::All(AllWord::All) => EventChoice::All,
            EventChoiceRepr::List(v) => EventChoice::List(v),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Once,
    Sticky,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Once => "once",
            Mode::Sticky => "sticky",
        }
    }
}

/// `sweep.crash`: in-order prefixes of the write log always, plus these.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    /// Also lose up to this many of the writes since the last flush (default 0).
    #[serde(default)]
    pub reorder: usize,
    /// Also tear the newest write at up to this many sector boundaries (default 0).
    #[serde(default)]
    pub torn: usize,
}

/// The most reorderings: the states grow as (writes since a flush)^reorder.
const MAX_REORDER: usize = 3;

/// The sweep of one matrix case: `${name}` replaced in the workload's image, format, cache and
/// commands and in the checks, then checked.
pub fn substitute(
    s: &Sweep,
    sub: &dyn Fn(&str) -> Result<String, String>,
) -> Result<Sweep, String> {
    let all = |v: &[String]| v.iter().map(|c| sub(c)).collect::<Result<Vec<_>, _>>();
    let out = Sweep {
        workload: Workload {
            image: sub(&s.workload.image)?,
            format: sub(&s.workload.format)?,
            cache: s.workload.cache.as_deref().map(sub).transpose()?,
            commands: all(&s.workload.commands)?,
        },
        checks: all(&s.checks)?,
        ..s.clone()
    };
    check(&out)?;
    Ok(out)
}

/// Rules serde cannot express; `Err` is the message without the file name.
pub fn check(s: &Sweep) -> Result<(), String> {
    if s.faults.is_none() && s.crash.is_none() {
        return Err("sweep: needs `faults`, `crash` or both".into());
    }
    if s.workload.commands.is_empty() {
        return Err("sweep.workload.commands: the workload needs at least one command".into());
    }
    for (i, c) in s.workload.commands.iter().enumerate() {
        workload::parse(c).map_err(|e| format!("sweep.workload.commands[{i}]: {e}"))?;
    }
    if let Some(f) = &s.faults {
        if let EventChoice::List(names) = &f.events {
            if names.is_empty() {
                return Err("sweep.faults.events: name at least one event, or say `all`".into());
            }
            for n in names {
                if Event::from_name(n).is_none() {
                    return Err(format!(
                        "sweep.faults.events: `{n}` is not a blkdebug event (see QEMU's BlkdebugEvent: l1_update, l2_load, write_aio, ...)"
                    ));
                }
            }
        }
        if f.errno.is_empty() || f.errno.iter().any(|&e| e == 0 || e > 4095) {
            return Err("sweep.faults.errno: one or more errno values, 1 to 4095".into());
        }
        if f.mode.is_empty() {
            return Err("sweep.faults.mode: `once`, `sticky` or both".into());
        }
        if let Some(r) = &f.random {
            if r.runs == 0 || r.runs > MAX_RANDOM_RUNS {
                return Err(format!("sweep.faults.random.runs: 1 to {MAX_RANDOM_RUNS}"));
            }
            if r.faults == 0 || r.faults > 16 {
                return Err("sweep.faults.random.faults: 1 to 16 faults a run".into());
            }
        }
    }
    if let Some(c) = &s.crash
        && c.reorder > MAX_REORDER
    {
        return Err(format!(
            "sweep.crash.reorder: at most {MAX_REORDER} (the states grow as the writes since a flush to that power)"
        ));
    }
    Ok(())
}
