//! Minimising a failing case: greedy delta debugging over the case's structure. Each candidate is
//! a strictly simpler case (fewer commands, rules, flags or options, smaller numbers); the first
//! candidate that still fails the same way becomes the new case, until none does or the budget
//! of runs is spent.

use super::case::{Command, FuzzCase, Layer, Rule, Rules, Tok};

/// Minimises `case`; `still_fails` runs a candidate. Returns the smallest failing case found
/// and the number of candidates tried.
pub fn minimise(
    case: &FuzzCase,
    budget: usize,
    mut still_fails: impl FnMut(&FuzzCase) -> bool,
) -> (FuzzCase, usize) {
    let phases: [fn(&FuzzCase) -> Vec<FuzzCase>; 4] = [
        command_removals,
        layer_simplifications,
        option_simplifications,
        token_simplifications,
    ];
    let mut best = case.clone();
    let mut tried = 0;
    // Rounds over the phases until one changes nothing.
    for _round in 0..3 {
        let mut progress = false;
        for phase in phases {
            // After a success, carry on from the same position in the new candidate list:
            // the candidates before it were tried on an almost identical case and failed.
            let mut start = 0;
            loop {
                let candidates = phase(&best);
                let mut found = None;
                for (i, c) in candidates.into_iter().enumerate().skip(start) {
                    if tried >= budget {
                        return (best, tried);
                    }
                    tried += 1;
                    if c != best && still_fails(&c) {
                        found = Some((i, c));
                        break;
                    }
                }
                match found {
                    Some((i, c)) => {
                        best = c;
                        start = i;
                        progress = true;
                    }
                    None => break,
                }
            }
        }
        if !progress {
            break;
        }
    }
    (best, tried)
}

fn variant(c: &FuzzCase, f: impl FnOnce(&mut FuzzCase)) -> FuzzCase {
    let mut n = c.clone();
    f(&mut n);
    n
}

/// Runs of commands dropped: halves, quarters, ..., single commands.
fn command_removals(c: &FuzzCase) -> Vec<FuzzCase> {
    let mut out = Vec::new();
    let n = c.commands.len();
    let mut chunk = n / 2;
    while chunk >= 1 {
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            out.push(variant(c, |x| {
                x.commands.drain(start..end);
            }));
            start = end;
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }
    out
}

fn layer_simplifications(c: &FuzzCase) -> Vec<FuzzCase> {
    layer_candidates(&c.layer)
        .into_iter()
        .map(|l| variant(c, |x| x.layer = l))
        .collect()
}

/// Options back to their defaults, the image smaller.
fn option_simplifications(c: &FuzzCase) -> Vec<FuzzCase> {
    let mut out = Vec::new();
    if c.blkverify {
        out.push(variant(c, |x| x.blkverify = false));
    }
    if c.cache.is_some() {
        out.push(variant(c, |x| x.cache = None));
    }
    if !c.explicit_format {
        out.push(variant(c, |x| x.explicit_format = true));
    }
    let img = &c.image;
    if img.refcount_bits != 0 {
        out.push(variant(c, |x| x.image.refcount_bits = 0));
    }
    if img.lazy_refcounts {
        out.push(variant(c, |x| x.image.lazy_refcounts = false));
    }
    if img.cluster_size != 0 && !img.v3 {
        out.push(variant(c, |x| x.image.v3 = true));
    }
    if img.cluster_size != 0 && img.cluster_size != 65536 {
        out.push(variant(c, |x| x.image.cluster_size = 65536));
    }
    for s in smaller(img.size) {
        out.push(variant(c, |x| x.image.size = s));
    }
    out
}

/// Within commands: a flag dropped, an extra length dropped, a number made smaller.
fn token_simplifications(c: &FuzzCase) -> Vec<FuzzCase> {
    let mut out = Vec::new();
    for (i, cmd) in c.commands.iter().enumerate() {
        for v in command_candidates(cmd) {
            out.push(variant(c, |x| x.commands[i] = v));
        }
    }
    out
}

fn layer_candidates(layer: &Layer) -> Vec<Layer> {
    let mut out = vec![Layer::Plain];
    match layer {
        Layer::Plain => return Vec::new(),
        Layer::Legacy { config: None } => {}
        Layer::Legacy { config: Some(r) } => {
            out.push(Layer::Legacy { config: None });
            for r in rules_candidates(r) {
                out.push(Layer::Legacy { config: Some(r) });
            }
        }
        Layer::Json {
            align,
            max_transfer,
            config,
            inline,
        } => {
            let json = |align, max_transfer, config: Option<Rules>, inline| Layer::Json {
                align,
                max_transfer,
                config,
                inline,
            };
            if *align == 0 && *max_transfer == 0 {
                let mut all = config.clone().unwrap_or_default();
                all.0.extend(inline.0.iter().cloned());
                out.push(Layer::Legacy {
                    config: (!all.0.is_empty()).then_some(all),
                });
            }
            if *max_transfer != 0 {
                out.push(json(*align, 0, config.clone(), inline.clone()));
            }
            if *align != 0 {
                out.push(json(0, *max_transfer, config.clone(), inline.clone()));
                for a in smaller(*align).into_iter().filter(|a| a.is_power_of_two()) {
                    if max_transfer.is_multiple_of(a) {
                        out.push(json(a, *max_transfer, config.clone(), inline.clone()));
                    }
                }
            }
            if let Some(r) = config {
                // config rules moved inline, then dropped, then simplified
                let mut all = r.clone();
                all.0.extend(inline.0.iter().cloned());
                out.push(json(*align, *max_transfer, None, all));
                out.push(json(*align, *max_transfer, None, inline.clone()));
                for r in rules_candidates(r) {
                    out.push(json(*align, *max_transfer, Some(r), inline.clone()));
                }
            }
            for r in rules_candidates(inline) {
                out.push(json(*align, *max_transfer, config.clone(), r));
            }
        }
    }
    out
}

fn rules_candidates(rules: &Rules) -> Vec<Rules> {
    let mut out = Vec::new();
    for i in 0..rules.0.len() {
        let mut r = rules.clone();
        r.0.remove(i);
        out.push(r);
    }
    for (i, rule) in rules.0.iter().enumerate() {
        for simpler in rule_candidates(rule) {
            let mut r = rules.clone();
            r.0[i] = simpler;
            out.push(r);
        }
    }
    out
}

fn rule_candidates(rule: &Rule) -> Vec<Rule> {
    let mut out = Vec::new();
    for step in 0..6 {
        let mut r = rule.clone();
        let changed = match &mut r {
            Rule::Inject {
                state,
                errno,
                sector,
                once,
                immediately,
                iotype,
                ..
            } => match step {
                0 => std::mem::take(state) != 0,
                1 => errno.take().is_some(),
                2 => sector.take().is_some(),
                3 => std::mem::take(once),
                4 => std::mem::take(immediately),
                _ => iotype.take().is_some(),
            },
            Rule::SetState { state, .. } => step == 0 && std::mem::take(state) != 0,
        };
        if changed {
            out.push(r);
        }
    }
    out
}

fn command_candidates(cmd: &Command) -> Vec<Command> {
    let mut out = Vec::new();
    let nums = cmd.args.iter().filter(|t| matches!(t, Tok::Num(_))).count();
    for (i, tok) in cmd.args.iter().enumerate() {
        let replace = |t: Option<Tok>| {
            let mut c = cmd.clone();
            match t {
                Some(t) => c.args[i] = t,
                None => {
                    c.args.remove(i);
                }
            }
            c
        };
        match tok {
            Tok::Flag(_) | Tok::Opt(..) | Tok::OptWord(..) => out.push(replace(None)),
            // an extra length of a vectored command
            Tok::Num(_) if nums > 2 && cmd.name != "alloc" => out.push(replace(None)),
            _ => {}
        }
        if let Tok::Num(n) = tok {
            for s in smaller(*n) {
                out.push(replace(Some(Tok::Num(s))));
            }
        }
    }
    if cmd.name == "alloc" && nums == 2 {
        let mut c = cmd.clone();
        c.args.pop();
        out.push(c);
    }
    out
}

/// Rounder or smaller values than `n`, roundest first.
fn smaller(n: u64) -> Vec<u64> {
    let mut v = vec![0, 512, 4096, 65536, 1 << 20];
    for unit in [1 << 20, 65536, 4096, 512] {
        v.push(n / unit * unit);
    }
    v.push(n / 2);
    v.push(n / 2 / 512 * 512);
    v.push(n.saturating_sub(512));
    v.push(n.saturating_sub(1));
    let mut seen = Vec::new();
    v.retain(|&x| {
        let keep = x < n && !seen.contains(&x);
        seen.push(x);
        keep
    });
    v
}
