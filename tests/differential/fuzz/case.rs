//! A fuzz case as plain data (image, drive, cache mode, commands), and how it renders into a
//! qemu-io command line, the files of its scratch directory and a shell script that replays it.

use blockfault::block::blkdebug::events::Event;
use std::fmt::Write;

/// Name of the blkdebug config file, when a case has one.
pub const RULES_FILE: &str = "rules.cfg";
/// blkverify's raw reference image.
pub const REFERENCE_IMAGE: &str = "ref.img";

#[derive(Clone, Debug, PartialEq)]
pub struct FuzzCase {
    /// the seed it was generated from (a minimised case keeps its origin's)
    pub seed: u64,
    pub image: Image,
    /// pass `-f FMT` (or `"driver"` in a json: filename); otherwise qemu-io probes
    pub explicit_format: bool,
    pub layer: Layer,
    /// `blkverify:ref.img:DRIVE`, with `ref.img` a raw image of the same virtual size (only over
    /// a plain or `blkdebug:` drive; the format on top is then raw)
    pub blkverify: bool,
    /// `-t MODE`
    pub cache: Option<&'static str>,
    pub commands: Vec<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    Raw,
    Qcow2,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// The image, created by the real `qemu-img create` so both engines start from the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Image {
    pub format: Format,
    pub size: u64,
    /// qcow2 only
    pub cluster_size: u64,
    /// qcow2 only: compat=1.1 (else 0.10)
    pub v3: bool,
    /// qcow2 v3 only
    pub lazy_refcounts: bool,
    /// qcow2 v3 only; 0 = the default (16)
    pub refcount_bits: u64,
}

impl Image {
    pub fn file_name(&self) -> &'static str {
        match self.format {
            Format::Raw => "t.img",
            Format::Qcow2 => "t.qcow2",
        }
    }

    /// The virtual size qemu-img gives the image (qcow2 rounds up to a sector).
    pub fn virtual_size(&self) -> u64 {
        match self.format {
            Format::Raw => self.size,
            Format::Qcow2 => self.size.next_multiple_of(512),
        }
    }

    /// `qemu-img create` arguments.
    pub fn create_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["create".into(), "-q".into(), "-f".into()];
        a.push(self.format.name().into());
        if self.format == Format::Qcow2 {
            let mut o = format!(
                "cluster_size={},compat={}",
                self.cluster_size,
                if self.v3 { "1.1" } else { "0.10" }
            );
            if self.lazy_refcounts {
                o += ",lazy_refcounts=on";
            }
            if self.refcount_bits != 0 {
                o += &format!(",refcount_bits={}", self.refcount_bits);
            }
            a.push("-o".into());
            a.push(o);
        }
        a.push(self.file_name().into());
        a.push(self.size.to_string());
        a
    }
}

/// What sits between the format driver and the file.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// `-f FMT t.img`
    Plain,
    /// `blkdebug:rules.cfg:t.img`, or `blkdebug::t.img` without rules
    Legacy { config: Option<Rules> },
    /// `json:{"driver":FMT,"file":{"driver":"blkdebug",...}}`
    Json {
        align: u64,
        max_transfer: u64,
        /// rules in a `"config"` file
        config: Option<Rules>,
        /// rules inline as `"inject-error"`/`"set-state"` lists
        inline: Rules,
    },
}

impl Layer {
    pub fn has_blkdebug(&self) -> bool {
        !matches!(self, Layer::Plain)
    }

    pub fn align(&self) -> u64 {
        match self {
            Layer::Json { align, .. } => *align,
            _ => 0,
        }
    }

    pub fn max_transfer(&self) -> u64 {
        match self {
            Layer::Json { max_transfer, .. } => *max_transfer,
            _ => 0,
        }
    }

    /// Every rule, config file first (the order QEMU adds them in).
    pub fn rules(&self) -> Vec<&Rule> {
        match self {
            Layer::Plain => Vec::new(),
            Layer::Legacy { config } => config.iter().flat_map(|r| r.0.iter()).collect(),
            Layer::Json { config, inline, .. } => config
                .iter()
                .flat_map(|r| r.0.iter())
                .chain(inline.0.iter())
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules(pub Vec<Rule>);

#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    Inject {
        event: Event,
        /// 0 = any state
        state: u64,
        /// None = the default (EIO)
        errno: Option<i64>,
        /// None = any
        sector: Option<u64>,
        once: bool,
        immediately: bool,
        iotype: Option<&'static str>,
    },
    SetState {
        event: Event,
        state: u64,
        new_state: u64,
    },
}

impl Rule {
    pub fn event(&self) -> Event {
        match self {
            Rule::Inject { event, .. } | Rule::SetState { event, .. } => *event,
        }
    }

    /// `(section, [(key, value)])`, in the order written.
    fn fields(&self) -> (&'static str, Vec<(&'static str, String)>) {
        match self {
            Rule::Inject {
                event,
                state,
                errno,
                sector,
                once,
                immediately,
                iotype,
            } => {
                let mut f = vec![("event", event.name().to_string())];
                if *state != 0 {
                    f.push(("state", state.to_string()));
                }
                if let Some(e) = errno {
                    f.push(("errno", e.to_string()));
                }
                if let Some(s) = sector {
                    f.push(("sector", s.to_string()));
                }
                if *once {
                    f.push(("once", "on".into()));
                }
                if *immediately {
                    f.push(("immediately", "on".into()));
                }
                if let Some(t) = iotype {
                    f.push(("iotype", t.to_string()));
                }
                ("inject-error", f)
            }
            Rule::SetState {
                event,
                state,
                new_state,
            } => {
                let mut f = vec![("event", event.name().to_string())];
                if *state != 0 {
                    f.push(("state", state.to_string()));
                }
                f.push(("new_state", new_state.to_string()));
                ("set-state", f)
            }
        }
    }
}

impl Rules {
    /// The INI config file.
    pub fn config_text(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            let (section, fields) = r.fields();
            writeln!(s, "[{section}]").unwrap();
            for (k, v) in fields {
                writeln!(s, "{k} = \"{v}\"").unwrap();
            }
        }
        s
    }

    /// `"inject-error":[...],"set-state":[...]` (only the non-empty lists), for a json: filename.
    fn json_members(&self) -> Vec<String> {
        let mut out = Vec::new();
        for section in ["inject-error", "set-state"] {
            let items: Vec<String> = self
                .0
                .iter()
                .map(Rule::fields)
                .filter(|(s, _)| *s == section)
                .map(|(_, fields)| {
                    let members: Vec<String> = fields
                        .iter()
                        .map(|(k, v)| {
                            let value = match *k {
                                "event" | "iotype" => format!("\"{v}\""),
                                "once" | "immediately" => (v == "on").to_string(),
                                _ => v.clone(),
                            };
                            format!("\"{k}\":{value}")
                        })
                        .collect();
                    format!("{{{}}}", members.join(","))
                })
                .collect();
            if !items.is_empty() {
                out.push(format!("\"{section}\":[{}]", items.join(",")));
            }
        }
        out
    }
}

/// One qemu-io command: a name and its tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub name: &'static str,
    pub args: Vec<Tok>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// `-z`
    Flag(&'static str),
    /// `-P 5`
    Opt(&'static str, u64),
    /// `-c none`
    OptWord(&'static str, &'static str),
    /// a number (offset, length, milliseconds)
    Num(u64),
    /// an event name, tag, ...
    Word(&'static str),
}

impl Command {
    pub fn new(name: &'static str, args: Vec<Tok>) -> Command {
        Command { name, args }
    }

    pub fn text(&self) -> String {
        let mut s = self.name.to_string();
        for t in &self.args {
            s.push(' ');
            match t {
                Tok::Flag(f) => s += f,
                Tok::Opt(f, n) => write!(s, "{f} {n}").unwrap(),
                Tok::OptWord(f, w) => write!(s, "{f} {w}").unwrap(),
                Tok::Num(n) => write!(s, "{n}").unwrap(),
                Tok::Word(w) => s += w,
            }
        }
        s
    }

    pub fn is_aio(&self) -> bool {
        self.name.starts_with("aio_")
    }
}

impl FuzzCase {
    /// `qemu-img create` argument lists: the image, and blkverify's reference.
    pub fn images(&self) -> Vec<Vec<String>> {
        let mut v = vec![self.image.create_args()];
        if self.blkverify {
            v.push(
                [
                    "create",
                    "-q",
                    "-f",
                    "raw",
                    REFERENCE_IMAGE,
                    &self.image.virtual_size().to_string(),
                ]
                .map(String::from)
                .to_vec(),
            );
        }
        v
    }

    /// The format driver on top.
    pub fn top_format(&self) -> &'static str {
        if self.blkverify {
            "raw"
        } else {
            self.image.format.name()
        }
    }

    pub fn drive(&self) -> String {
        let inner = self.inner_drive();
        if self.blkverify {
            format!("blkverify:{REFERENCE_IMAGE}:{inner}")
        } else {
            inner
        }
    }

    fn inner_drive(&self) -> String {
        let img = self.image.file_name();
        match &self.layer {
            Layer::Plain => img.to_string(),
            Layer::Legacy { config: None } => format!("blkdebug::{img}"),
            Layer::Legacy { config: Some(_) } => format!("blkdebug:{RULES_FILE}:{img}"),
            Layer::Json {
                align,
                max_transfer,
                config,
                inline,
            } => {
                let mut file = vec!["\"driver\":\"blkdebug\"".to_string()];
                if config.is_some() {
                    file.push(format!("\"config\":\"{RULES_FILE}\""));
                }
                if *align != 0 {
                    file.push(format!("\"align\":{align}"));
                }
                if *max_transfer != 0 {
                    file.push(format!("\"max-transfer\":{max_transfer}"));
                }
                file.extend(inline.json_members());
                file.push(format!(
                    "\"image\":{{\"driver\":\"file\",\"filename\":\"{img}\"}}"
                ));
                let driver = if self.explicit_format {
                    format!("\"driver\":\"{}\",", self.image.format.name())
                } else {
                    String::new()
                };
                format!("json:{{{driver}\"file\":{{{}}}}}", file.join(","))
            }
        }
    }

    /// qemu-io's argv without the program name.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.explicit_format && !matches!(self.layer, Layer::Json { .. }) {
            a.push("-f".to_string());
            a.push(self.top_format().to_string());
        }
        if let Some(c) = self.cache {
            a.push("-t".to_string());
            a.push(c.to_string());
        }
        for c in &self.commands {
            a.push("-c".to_string());
            a.push(c.text());
        }
        a.push(self.drive());
        a
    }

    /// The config file, if the case has one (the image is created separately).
    pub fn files(&self) -> Vec<(String, Vec<u8>)> {
        let config = match &self.layer {
            Layer::Legacy { config } | Layer::Json { config, .. } => config.as_ref(),
            Layer::Plain => None,
        };
        config
            .map(|r| vec![(RULES_FILE.to_string(), r.config_text().into_bytes())])
            .unwrap_or_default()
    }

    /// A shell script that sets up a scratch directory and runs the case on real QEMU.
    pub fn script(&self) -> String {
        let mut s = String::from("cd \"$(mktemp -d)\"\n");
        for args in self.images() {
            writeln!(s, "qemu-img {}", shell_words(&args)).unwrap();
        }
        for (name, content) in self.files() {
            writeln!(
                s,
                "cat > {name} <<'EOF'\n{}EOF",
                String::from_utf8_lossy(&content)
            )
            .unwrap();
        }
        writeln!(
            s,
            "stdbuf -oL qemu-io {} 2>&1; echo \"[exit $?]\"",
            shell_words(&self.args())
        )
        .unwrap();
        writeln!(
            s,
            "# ours: cargo run -q -- io {}",
            shell_words(&self.args())
        )
        .unwrap();
        s
    }
}

/// Arguments quoted for pasting into a shell.
pub fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_./:=,".contains(&c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
