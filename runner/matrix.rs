//! Expands a scenario's `matrix:` into concrete cases, substituting `${name}`, and checks that
//! every path a case writes stays inside its scratch directory.

use crate::scenario::{Condition, Drive, Image, QemuIoStep, Scalar, Scenario, Step};
use std::collections::BTreeMap;
use std::path::{Component, Path};

/// One run of a scenario: a matrix combination (or the scenario itself) with values substituted.
#[derive(Clone, Debug)]
pub struct Case {
    /// `name=value` pairs in matrix order; empty without a matrix.
    pub bindings: Vec<(String, String)>,
    pub files: BTreeMap<String, String>,
    pub images: Vec<Image>,
    /// The steps this case runs (`if:` leaves some out).
    pub steps: Vec<CaseStep>,
    /// The scenario's `sweep:`, values substituted.
    pub sweep: Option<crate::sweep_spec::Sweep>,
}

/// A step of one case, values substituted.
#[derive(Clone, Debug)]
pub struct CaseStep {
    /// Its 1-based place among the scenario's `steps:`.
    pub number: usize,
    /// Its output and exit status are dropped (`quiet: true`).
    pub quiet: bool,
    pub step: Step,
}

impl Case {
    /// The line printed before this case's output when the scenario has a matrix.
    pub fn header(&self) -> Option<String> {
        if self.bindings.is_empty() {
            return None;
        }
        let pairs: Vec<String> = self
            .bindings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Some(format!("[case {}]", pairs.join(" ")))
    }
}

/// How many cases a matrix may make unless `--max-cases` says otherwise.
pub const DEFAULT_MAX_CASES: usize = 10_000;

/// All cases of a scenario, last matrix key varying fastest; more than `max` is an error, found
/// before any case is built.
pub fn expand(s: &Scenario, max: usize) -> Result<Vec<Case>, String> {
    let count = s
        .matrix
        .0
        .iter()
        .try_fold(1usize, |n, (_, values)| n.checked_mul(values.len()));
    match count {
        Some(n) if n <= max => {}
        _ => {
            let sizes: Vec<String> = s
                .matrix
                .0
                .iter()
                .map(|(_, v)| v.len().to_string())
                .collect();
            let total = count.map_or("more than 2^64".to_string(), |n| n.to_string());
            return Err(format!(
                "matrix: {} values make {total} cases, more than the {max} allowed (--max-cases N raises it)",
                sizes.join(" x ")
            ));
        }
    }
    let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for (name, values) in &s.matrix.0 {
        combos = combos
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut c = prefix.clone();
                    c.push((name.clone(), v.0.clone()));
                    c
                })
            })
            .collect();
    }
    combos.into_iter().map(|b| case(s, b)).collect()
}

fn case(s: &Scenario, bindings: Vec<(String, String)>) -> Result<Case, String> {
    let sub = |t: &str| substitute(t, &bindings);
    let files = s
        .files
        .iter()
        .map(|(k, v)| Ok((sub(k)?, sub(v)?)))
        .collect::<Result<BTreeMap<_, _>, String>>()?;
    let images = s
        .images
        .iter()
        .map(|i| {
            Ok(Image {
                name: sub(&i.name)?,
                format: sub(&i.format)?,
                size: Scalar(sub(&i.size.0)?),
                options: i.options.as_deref().map(sub).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let steps = s
        .steps
        .iter()
        .enumerate()
        .filter(|(_, e)| e.condition.as_ref().is_none_or(|c| holds(c, &bindings)))
        .map(|(i, e)| {
            Ok(CaseStep {
                number: i + 1,
                quiet: e.quiet,
                step: step(&e.step, &sub)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    for name in files.keys() {
        check_relative("files", name)?;
    }
    for image in &images {
        check_relative("images", &image.name)?;
    }
    let sweep = s
        .sweep
        .as_ref()
        .map(|w| crate::sweep_spec::substitute(w, &sub))
        .transpose()?;
    Ok(Case {
        bindings,
        files,
        images,
        steps,
        sweep,
    })
}

/// Whether a step's `if:` holds in the case with these bindings.
fn holds(condition: &Condition, bindings: &[(String, String)]) -> bool {
    condition.0.iter().all(|(key, wanted)| {
        bindings
            .iter()
            .any(|(k, v)| k == key && wanted.0.iter().any(|w| &w.0 == v))
    })
}

fn step(st: &Step, sub: &dyn Fn(&str) -> Result<String, String>) -> Result<Step, String> {
    Ok(match st {
        Step::Echo(t) => Step::Echo(sub(t)?),
        Step::QemuImg(args) => Step::QemuImg(
            args.iter()
                .map(|a| Ok(Scalar(sub(&a.0)?)))
                .collect::<Result<_, String>>()?,
        ),
        Step::QemuIo(q) => Step::QemuIo(QemuIoStep {
            drive: match &q.drive {
                None => None,
                Some(Drive::Filename(f)) => Some(Drive::Filename(sub(f)?)),
                Some(Drive::Json(m)) => Some(Drive::Json(json_map(m, sub)?)),
            },
            format: q.format.as_deref().map(sub).transpose()?,
            cache: q.cache.as_deref().map(sub).transpose()?,
            image_opts: q.image_opts,
            trace: q.trace,
            commands: q
                .commands
                .iter()
                .map(|c| sub(c))
                .collect::<Result<_, String>>()?,
        }),
    })
}

type JsonMap = serde_json::Map<String, serde_json::Value>;

fn json_map(m: &JsonMap, sub: &dyn Fn(&str) -> Result<String, String>) -> Result<JsonMap, String> {
    m.iter()
        .map(|(k, v)| Ok((sub(k)?, json_value(v, sub)?)))
        .collect()
}

fn json_value(
    v: &serde_json::Value,
    sub: &dyn Fn(&str) -> Result<String, String>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match v {
        Value::String(s) => Value::String(sub(s)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| json_value(x, sub))
                .collect::<Result<_, String>>()?,
        ),
        Value::Object(m) => Value::Object(json_map(m, sub)?),
        other => other.clone(),
    })
}

/// Replaces `${name}` by its value. Without a matrix the text is left alone; with one, an unknown
/// `${name}` is an error, because it is almost certainly a typo.
pub fn substitute(text: &str, bindings: &[(String, String)]) -> Result<String, String> {
    if bindings.is_empty() {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {text:?}"))?;
        let name = &after[..end];
        let value = bindings
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("`${{{name}}}` is not a matrix key (in {text:?})"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Scenario paths are relative and never climb out: the scratch directory is all a scenario owns.
pub fn check_relative(key: &str, name: &str) -> Result<(), String> {
    let p = Path::new(name);
    let ok = !name.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && p.components().any(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key}: `{name}` must be a relative path inside the scratch directory (no leading `/`, no `..`)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_known_names_and_rejects_unknown() {
        let b = vec![("e".to_string(), "read_aio".to_string())];
        assert_eq!(
            substitute("event = \"${e}\" ${e}", &b).unwrap(),
            "event = \"read_aio\" read_aio"
        );
        assert!(substitute("${x}", &b).is_err());
        assert_eq!(substitute("${x}", &[]).unwrap(), "${x}");
    }

    #[test]
    fn paths_must_stay_inside() {
        assert!(check_relative("files", "a/b.cfg").is_ok());
        for bad in ["/etc/x", "../x", "a/../../x", "", "."] {
            assert!(check_relative("files", bad).is_err(), "{bad}");
        }
    }
}
