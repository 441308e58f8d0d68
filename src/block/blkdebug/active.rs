//! blkdebug's active rule list with an index for matching requests quickly.
//!
//! QEMU walks the active list front to back for every request; with many rules that walk costs
//! more than the I/O. The index finds the same rule (the first in list order whose sector lies
//! in the request and whose iotype matches) without the walk: rules for any offset are kept
//! per iotype by their first position, rules for one offset in an ordered map.

use super::{Action, Rule};
use std::collections::BTreeMap;
use std::rc::Rc;

/// Which event (and node state, and version of the rule lists) built the current list: the
/// same event in the same state with unchanged rules would build the same list again.
pub(super) type Source = (usize, i32, u64);

#[derive(Default)]
pub(super) struct ActiveRules {
    rules: Vec<Rc<Rule>>,
    source: Option<Source>,
    /// per iotype bit, the first position of a rule that matches any offset
    first_any: [Option<usize>; 6],
    /// offset → positions of the rules for that offset
    by_offset: BTreeMap<u64, Vec<usize>>,
}

impl ActiveRules {
    pub(super) fn source(&self) -> Option<Source> {
        self.source
    }

    pub(super) fn replace(&mut self, rules: Vec<Rc<Rule>>, source: Source) {
        self.rules = rules;
        self.source = Some(source);
        self.reindex();
    }

    fn reindex(&mut self) {
        self.first_any = [None; 6];
        self.by_offset.clear();
        for (pos, rule) in self.rules.iter().enumerate() {
            let Action::InjectError(ie) = &rule.action else {
                continue;
            };
            match ie.offset {
                None => {
                    for (bit, first) in self.first_any.iter_mut().enumerate() {
                        if ie.iotype_mask & (1 << bit) != 0 && first.is_none() {
                            *first = Some(pos);
                        }
                    }
                }
                Some(o) => self.by_offset.entry(o).or_default().push(pos),
            }
        }
    }

    /// The position of the first rule matching a request, as QEMU's list walk finds it.
    pub(super) fn first_match(&self, offset: u64, bytes: u64, kind: u8) -> Option<usize> {
        let bit = kind.trailing_zeros() as usize;
        let mut best = self.first_any.get(bit).copied().flatten();
        if bytes != 0 {
            let end = offset.saturating_add(bytes);
            for positions in self.by_offset.range(offset..end).map(|(_, p)| p) {
                for &pos in positions {
                    if best.is_some_and(|b| b <= pos) {
                        break;
                    }
                    if let Action::InjectError(ie) = &self.rules[pos].action
                        && ie.iotype_mask & kind != 0
                    {
                        best = Some(pos);
                    }
                }
            }
        }
        best
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.rules.len()
    }

    pub(super) fn get(&self, pos: usize) -> &Rc<Rule> {
        &self.rules[pos]
    }

    /// Removes a consumed `once` rule.
    pub(super) fn remove(&mut self, pos: usize) -> Rc<Rule> {
        let rule = self.rules.remove(pos);
        self.reindex();
        rule
    }
}

#[cfg(test)]
mod tests {
    use super::super::InjectError;
    use super::*;

    fn rule(id: u64, offset: Option<u64>, mask: u8) -> Rc<Rule> {
        Rc::new(Rule {
            id,
            state: 0,
            action: Action::InjectError(InjectError {
                errno: 5,
                offset,
                once: false,
                immediately: false,
                iotype_mask: mask,
            }),
        })
    }

    /// The index must agree with the plain walk QEMU does.
    fn walk(rules: &[Rc<Rule>], offset: u64, bytes: u64, kind: u8) -> Option<usize> {
        rules.iter().position(|r| {
            let Action::InjectError(ie) = &r.action else {
                return false;
            };
            let at = match ie.offset {
                None => true,
                Some(o) => bytes != 0 && o >= offset && o < offset + bytes,
            };
            at && ie.iotype_mask & kind != 0
        })
    }

    #[test]
    fn index_finds_what_the_walk_finds() {
        let rules = vec![
            rule(0, Some(4096), 0b10),
            rule(1, Some(512), 0b01),
            rule(2, None, 0b10),
            rule(3, Some(0), 0b11),
            rule(4, None, 0b01),
        ];
        let mut active = ActiveRules::default();
        active.replace(rules.clone(), (0, 1, 0));
        for offset in (0..8192).step_by(256) {
            for bytes in [0, 1, 512, 513, 4096] {
                for kind in [0b01, 0b10, 0b100] {
                    assert_eq!(
                        active.first_match(offset, bytes, kind),
                        walk(&rules, offset, bytes, kind),
                        "offset {offset} bytes {bytes} kind {kind}"
                    );
                }
            }
        }
    }
}
