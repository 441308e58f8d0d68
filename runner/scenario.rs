//! The scenario file format: plain data, deserialised from YAML with unknown keys rejected.

#[path = "drive_schema.rs"]
pub mod drive_schema;

use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// One scenario file.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "blockfault scenario")]
pub struct Scenario {
    /// One line saying what the scenario shows.
    pub description: String,
    /// Runs the scenario once per combination of values (the last key varies fastest), with
    /// `${name}` substituted in `files`, `images` and `steps`.
    #[serde(default)]
    pub matrix: OrderedMap<Vec<Scalar>>,
    /// Text files written into the scratch directory before anything else (name: contents).
    #[serde(default, deserialize_with = "unique_keys")]
    pub files: BTreeMap<String, String>,
    /// Images created as by `qemu-img create -q` before the steps.
    #[serde(default)]
    pub images: Vec<Image>,
    /// What to run, in order; the scenario's output is all the steps' output concatenated.
    /// In a sweep, they prepare the image before the workload (`steps: []` when nothing does).
    pub steps: Vec<StepEntry>,
    /// Run a workload again and again, failing each blkdebug event occurrence or cutting the
    /// power at each write, and check the image after each (see README, "Sweeps").
    #[serde(default)]
    pub sweep: Option<crate::sweep_spec::Sweep>,
    /// Tools (`qemu-io`, `qemu-img`) or image formats (`raw`, `qcow2`, ...) the scenario needs;
    /// it is skipped, saying why, where one is missing.
    #[serde(default)]
    pub requires: OneOrMany,
    /// Skip the scenario unconditionally, giving the reason.
    #[serde(default)]
    pub skip: Option<String>,
    /// The backends this scenario runs on (default: both). Needs `reason`.
    #[serde(default)]
    pub backends: Option<Vec<BackendKind>>,
    /// Why `backends` is restricted; shown when the scenario is skipped.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An image to create in the scratch directory.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// File name, relative to the scratch directory.
    pub name: String,
    /// Image format, as `qemu-img create -f` takes it.
    #[schemars(with = "drive_schema::FormatName")]
    pub format: String,
    /// Virtual size, as `qemu-img create` takes it (`1M`, `65536`, ...).
    pub size: Scalar,
    /// Creation options, as `-o` takes them (`cluster_size=512`).
    #[serde(default)]
    pub options: Option<String>,
}

/// One step of a scenario.
#[derive(Clone, Debug)]
pub enum Step {
    /// Print this text and a newline.
    Echo(String),
    /// One qemu-io process's worth of work.
    QemuIo(QemuIoStep),
    /// qemu-img's argv, without the program name.
    QemuImg(Vec<Scalar>),
}

/// A step as written: `- echo: text`, `- qemu-io: {...}` or `- qemu-img: [...]`, a mapping
/// with that one key, plus `if:` to run it only in some matrix cases and `quiet: true` to keep
/// its output out of the golden.
#[derive(Clone, Debug)]
pub struct StepEntry {
    pub condition: Option<Condition>,
    /// Run the step but drop its output and exit status, as iotests' `> /dev/null 2>&1`.
    pub quiet: bool,
    pub step: Step,
}

/// `if: {key: value}` or `if: {key: [value, ...]}`: the step runs in the matrix cases where every
/// key named has one of the values given.
pub type Condition = OrderedMap<OneOrManyScalars>;

/// One matrix value or a list of them.
#[derive(Clone, Debug, JsonSchema)]
#[schemars(with = "OneOrManyScalarsRepr")]
pub struct OneOrManyScalars(pub Vec<Scalar>);

#[derive(Deserialize, JsonSchema)]
#[serde(untagged, expecting = "a matrix value or a list of them")]
enum OneOrManyScalarsRepr {
    One(Scalar),
    Many(Vec<Scalar>),
}

impl<'de> Deserialize<'de> for OneOrManyScalars {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match OneOrManyScalarsRepr::deserialize(d)? {
            OneOrManyScalarsRepr::One(v) => OneOrManyScalars(vec![v]),
            OneOrManyScalarsRepr::Many(v) => OneOrManyScalars(v),
        })
    }
}

const STEP_KEYS: &str = "`echo`, `qemu-io`, `qemu-img`, `if`, `quiet`";

impl<'de> Deserialize<'de> for StepEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = StepEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(
                    f,
                    "a step: a mapping with one of `echo`, `qemu-io`, `qemu-img` (and optionally `if`, `quiet`)"
                )
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<StepEntry, A::Error> {
                use serde::de::Error;
                let mut condition = None;
                let mut quiet = None;
                let mut step: Option<Step> = None;
                while let Some(key) = m.next_key::<String>()? {
                    let parsed = match key.as_str() {
                        "if" => {
                            if condition.is_some() {
                                return Err(A::Error::custom("duplicate key `if`"));
                            }
                            condition = Some(m.next_value::<Condition>()?);
                            continue;
                        }
                        "quiet" => {
                            if quiet.is_some() {
                                return Err(A::Error::custom("duplicate key `quiet`"));
                            }
                            quiet = Some(m.next_value::<bool>()?);
                            continue;
                        }
                        "echo" => Step::Echo(m.next_value()?),
                        "qemu-io" => Step::QemuIo(m.next_value()?),
                        "qemu-img" => Step::QemuImg(m.next_value()?),
                        other => {
                            return Err(A::Error::custom(format!(
                                "unknown step `{other}`, expected one of {STEP_KEYS}"
                            )));
                        }
                    };
                    if step.is_some() {
                        return Err(A::Error::custom(format!(
                            "a step does one thing: `{key}` is a second one; start another `- ` item"
                        )));
                    }
                    step = Some(parsed);
                }
                let step = step.ok_or_else(|| {
                    A::Error::custom("a step needs one of `echo`, `qemu-io`, `qemu-img`")
                })?;
                Ok(StepEntry {
                    condition,
                    quiet: quiet.unwrap_or(false),
                    step,
                })
            }
        }
        d.deserialize_map(Visit)
    }
}

impl JsonSchema for StepEntry {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StepEntry".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let condition = g.subschema_for::<Condition>();
        let variant = |key: &str, doc: &str, value: schemars::Schema| {
            schemars::json_schema!({
                "type": "object",
                "description": doc,
                "properties": {
                    key: value,
                    "if": {
                        "description": "Run this step only in the matrix cases where each key named has the value given (or one of the values listed).",
                        "allOf": [condition.clone()],
                    },
                    "quiet": {
                        "description": "Run the step but keep its output and exit status out of the golden (iotests' `> /dev/null 2>&1`).",
                        "type": "boolean",
                    },
                },
                "required": [key],
                "additionalProperties": false,
            })
        };
        schemars::json_schema!({
            "description": "One step: a mapping with one of `echo`, `qemu-io`, `qemu-img`, and optionally `if` and `quiet`.",
            "oneOf": [
                variant("echo", "Print this text and a newline.", g.subschema_for::<String>()),
                variant("qemu-io", "One qemu-io process's worth of work.", g.subschema_for::<QemuIoStep>()),
                variant("qemu-img", "qemu-img's argv, without the program name.", g.subschema_for::<Vec<Scalar>>()),
            ],
        })
    }
}

/// `qemu-io [-f F] [-t C] [--image-opts] -c ... DRIVE`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QemuIoStep {
    /// The filename exactly as qemu-io takes it, or a mapping of json: block options.
    #[serde(default)]
    pub drive: Option<Drive>,
    /// As `-f`.
    #[serde(default)]
    #[schemars(with = "Option<drive_schema::FormatName>")]
    pub format: Option<String>,
    /// As `-t`.
    #[serde(default)]
    #[schemars(with = "Option<drive_schema::CacheMode>")]
    pub cache: Option<String>,
    /// As `--image-opts` (the drive is then a `key=value,...` string).
    #[serde(default, rename = "image-opts")]
    pub image_opts: bool,
    /// Every `-c` command, in order.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Print on stderr each blkdebug event and each request reaching a blkdebug node, with what
    /// the rules did (blockfault's own trace: never in the golden; builtin engine only, the
    /// scenario is skipped on `--backend qemu`).
    #[serde(default)]
    pub trace: bool,
}

/// A qemu-io drive: a filename, or json: options given as a mapping.
#[derive(Clone, Debug, JsonSchema)]
#[serde(untagged)]
pub enum Drive {
    Filename(String),
    Json(
        #[schemars(with = "drive_schema::BlockOptions")] serde_json::Map<String, serde_json::Value>,
    ),
}

impl<'de> Deserialize<'de> for Drive {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(UniqueJson::default())? {
            serde_json::Value::String(s) => Ok(Drive::Filename(s)),
            serde_json::Value::Object(m) => Ok(Drive::Json(m)),
            _ => Err(serde::de::Error::custom(
                "expected a filename string or a mapping of json: block options",
            )),
        }
    }
}

/// A JSON value from YAML, with a key given twice in any mapping an error (serde_json's own
/// Value would keep the last one silently), and a blkdebug rule's unknown `event` or `iotype` an error
/// where it is written (see [`drive_schema::check_rule_value`]).
#[derive(Clone, Copy, Default)]
struct UniqueJson(drive_schema::Within);

impl<'de> serde::de::DeserializeSeed<'de> for UniqueJson {
    type Value = serde_json::Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueJson {
    type Value = serde_json::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a filename string or a mapping of json: block options")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::new();
        while let Some(x) = a.next_element_seed(UniqueJson(self.0.element()))? {
            v.push(x);
        }
        Ok(serde_json::Value::Array(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = m.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
            }
            let v = m.next_value_seed(UniqueJson(self.0.value_of(&k)))?;
            drive_schema::check_rule_value(self.0, &k, &v).map_err(serde::de::Error::custom)?;
            out.insert(k, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// A mapping in which a key given twice is an error, not a silent overwrite.
fn unique_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let OrderedMap(pairs) = OrderedMap::<String>::deserialize(d)?;
    Ok(pairs.into_iter().collect())
}

/// Which engine runs the steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// blockfault's own engine.
    Builtin,
    /// The real qemu-io and qemu-img.
    Qemu,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Builtin => "builtin",
            BackendKind::Qemu => "qemu",
        }
    }
}

/// A YAML scalar taken as text, so that `size: 65536` and `size: 64k` both work.
#[derive(Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transparent)]
pub struct Scalar(#[schemars(with = "ScalarSchema")] pub String);

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // only describes the schema
enum ScalarSchema {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `requires:` takes one name or a list.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(from = "OneOrManyRepr")]
#[schemars(with = "OneOrManyRepr")]
pub struct OneOrMany(pub Vec<String>);

#[derive(Deserialize, JsonSchema)]
#[serde(untagged, expecting = "a name or a list of names")]
enum OneOrManyRepr {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrManyRepr> for OneOrMany {
    fn from(r: OneOrManyRepr) -> Self {
        match r {
            OneOrManyRepr::One(s) => OneOrMany(vec![s]),
            OneOrManyRepr::Many(v) => OneOrMany(v),
        }
    }
}

/// A mapping that keeps the file's key order (the matrix's last key varies fastest).
#[derive(Clone, Debug, Default)]
pub struct OrderedMap<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, V)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    if out.iter().any(|(seen, _)| *seen == k) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

impl<V: JsonSchema> JsonSchema for OrderedMap<V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_of_{}", V::schema_name()).into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "additionalProperties": g.subschema_for::<V>(),
        })
    }
}

/// A scenario that could not be read, with the position of the problem when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The largest scenario file: real ones are a few KiB.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The deepest nesting of flow collections (`[`, `{`): the YAML parser's time grows with the
/// square of it, and no scenario needs more than a handful.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Reads and parses one scenario file.
pub fn load(path: &Path) -> Result<Scenario, LoadError> {
    use std::io::Read;
    let at = |e: std::io::Error| LoadError(format!("{}: {e}", path.display()));
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(at)?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(LoadError(format!(
            "{}: larger than {MAX_FILE_BYTES} bytes, the most a scenario file may be",
            path.display()
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_column(e.as_bytes(), e.utf8_error().valid_up_to());
        LoadError(format!(
            "{}:{line}:{column}: not UTF-8 text",
            path.display()
        ))
    })?;
    parse(&text, path)
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_column(text: &[u8], offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, column)
}

/// Finds flow collections nested deeper than [`MAX_FLOW_DEPTH`], in one pass. A YAML lexer in
/// miniature: quoted scalars and comments are skipped, and so are plain words (`a[b` is a
/// word; inside a flow collection a word ends at `,[]{}`).
fn check_flow_depth(text: &str) -> Result<(), (usize, String)> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut in_word = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            in_word = false;
            i += 1;
            continue;
        }
        if in_word && !(depth > 0 && matches!(c, b',' | b'[' | b']' | b'{' | b'}')) {
            i += 1;
            continue;
        }
        in_word = false;
        match c {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'\'' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            break;
                        }
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Err((
                        i,
                        format!("`[` and `{{` nested more than {MAX_FLOW_DEPTH} deep"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' | b':' | b'-' | b'?' | b'|' | b'>' | b'&' | b'*' | b'!' => {}
            _ => in_word = true,
        }
        i += 1;
    }
    Ok(())
}

/// Parses scenario text; errors read `file:line:column: message`.
pub fn parse(text: &str, path: &Path) -> Result<Scenario, LoadError> {
    check_flow_depth(text).map_err(|(offset, message)| {
        let (line, column) = line_column(text.as_bytes(), offset);
        LoadError(format!("{}:{line}:{column}: {message}", path.display()))
    })?;
    let scenario: Scenario = yaml_serde::from_str(text).map_err(|e| {
        let message = strip_location(&e.to_string());
        match e.location() {
            Some(l) => LoadError(format!(
                "{}:{}:{}: {message}",
                path.display(),
                l.line(),
                l.column()
            )),
            None => LoadError(format!("{}: {message}", path.display())),
        }
    })?;
    check(&scenario).map_err(|m| LoadError(format!("{}: {m}", path.display())))?;
    Ok(scenario)
}

/// The location is already in front of the message; drop yaml_serde's trailing copy.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i)
            if message[i + 9..]
                .chars()
                .all(|c| c.is_ascii_digit() || c == ' ' || c.is_ascii_alphabetic()) =>
        {
            message[..i].to_string()
        }
        _ => message.to_string(),
    }
}

/// Rules serde cannot express.
fn check(s: &Scenario) -> Result<(), String> {
    if let Some(sweep) = &s.sweep {
        // With a matrix, each case's sweep is checked once its values are in (matrix.rs).
        if s.matrix.0.is_empty() {
            crate::sweep_spec::check(sweep)?;
        }
        if sweep.crash.is_some() && s.backends.as_deref() != Some(&[BackendKind::Builtin]) {
            return Err("sweep.crash: the crash sweep runs on the builtin engine only (the power-cut model is its file driver's write log): add `backends: [builtin]` and a `reason`".into());
        }
    }
    if s.backends.is_some() != s.reason.is_some() {
        return Err(
            "`backends` and `reason` go together: say why the scenario is limited to some backends"
                .into(),
        );
    }
    if let Some(b) = &s.backends
        && b.is_empty()
    {
        return Err("`backends` must name at least one backend".into());
    }
    for (name, values) in &s.matrix.0 {
        if values.is_empty() {
            return Err(format!("matrix: `{name}` has no values"));
        }
    }
    for (i, entry) in s.steps.iter().enumerate() {
        let Some(condition) = &entry.condition else {
            continue;
        };
        for (key, wanted) in &condition.0 {
            let Some((_, values)) = s.matrix.0.iter().find(|(k, _)| k == key) else {
                let keys: Vec<String> = s.matrix.0.iter().map(|(k, _)| format!("`{k}`")).collect();
                return Err(if keys.is_empty() {
                    format!(
                        "steps[{i}].if: `{key}` is not a matrix key (the scenario has no matrix)"
                    )
                } else {
                    format!(
                        "steps[{i}].if: `{key}` is not a matrix key (the matrix has {})",
                        keys.join(", ")
                    )
                });
            };
            for w in &wanted.0 {
                if !values.contains(w) {
                    let all: Vec<&str> = values.iter().map(|v| v.0.as_str()).collect();
                    return Err(format!(
                        "steps[{i}].if: `{key}` is never `{}` (its values are {})",
                        w.0,
                        all.join(", ")
                    ));
                }
            }
        }
    }
    for r in &s.requires.0 {
        if !KNOWN_REQUIREMENTS.contains(&r.as_str()) {
            let hint = KNOWN_REQUIREMENTS
                .iter()
                .map(|k| (edit_distance(r, k), k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "requires: unknown `{r}`{hint}: expected `qemu-io`, `qemu-img` or an image format QEMU 10.0.2 knows (`raw`, `qcow2`, ...: see `qemu-img --help`)"
            ));
        }
    }
    Ok(())
}

/// Edit distance counting a swap of neighbours as one edit (optimal string alignment), for
/// "did you mean".
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// What `requires:` may name: the tools, then QEMU 10.0.2's formats as `qemu-img --help` lists
/// them. A fixed list, so that a typo is an error on every machine and backend rather than a
/// scenario skipped forever.
pub const KNOWN_REQUIREMENTS: &[&str] = &[
    "qemu-io",
    "qemu-img",
    "blkdebug",
    "blklogwrites",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "file",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "iscsi",
    "iser",
    "luks",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "parallels",
    "preallocate",
    "qcow",
    "qcow2",
    "qed",
    "quorum",
    "raw",
    "rbd",
    "replication",
    "snapshot-access",
    "ssh",
    "throttle",
    "vdi",
    "vhdx",
    "vmdk",
    "vpc",
    "vvfat",
];
