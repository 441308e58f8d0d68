//! `qemu-img map` (human and `--output=json`): each extent's status from the first layer of
//! the backing chain that knows it, merged as qemu-img merges them.

use super::{Img, output_json};
use crate::block::driver::status;
use crate::block::executor::block_on;
use crate::block::io;
use crate::block::node::Node;
use crate::errno::strerror;
use crate::qemu_io::numbers::{NumError, strtosz};
use std::rc::Rc;

/// One extent of the map (qemu-img's MapEntry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub length: u64,
    pub data: bool,
    pub zero: bool,
    pub compressed: bool,
    /// host offset in `filename`, when valid
    pub offset: Option<u64>,
    pub depth: u64,
    pub present: bool,
    pub filename: Option<String>,
}

impl MapEntry {
    /// qemu-img's entry_mergeable: `next` continues `self` with the same status.
    fn mergeable(&self, next: &MapEntry) -> bool {
        if self.length == 0 {
            return false;
        }
        if self.zero != next.zero
            || self.data != next.data
            || self.compressed != next.compressed
            || self.depth != next.depth
            || self.present != next.present
            || self.filename != next.filename
            || self.offset.is_some() != next.offset.is_some()
        {
            return false;
        }
        match (self.offset, next.offset) {
            (Some(a), Some(b)) => a + self.length == b,
            _ => true,
        }
    }

    fn json(&self) -> String {
        let offset = self
            .offset
            .map(|o| format!(", \"offset\": {o}"))
            .unwrap_or_default();
        format!(
            "{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}, \"compressed\": {}{offset}}}",
            self.start,
            self.length,
            self.depth,
            self.present,
            self.zero,
            self.data,
            self.compressed
        )
    }
}

/// qemu-img's get_block_status: the status at `offset` from the first layer that has data or
/// zeroes there (or the last one), with that layer's depth.
pub async fn get_block_status(node: &Rc<Node>, offset: u64, bytes: u64) -> Result<MapEntry, i32> {
    let mut layer = node.clone();
    let mut bytes = bytes;
    let mut depth = 0;
    let st = loop {
        // filters are skipped (bdrv_skip_filters)
        while layer.driver.is_filter() {
            let next = layer.file().clone();
            layer = next;
        }
        let mut st = io::block_status(&layer, true, offset, bytes).await?;
        bytes = st.pnum;
        if st.flags & status::OFFSET_VALID != 0 && st.file.is_none() {
            st.file = Some(layer.clone());
        }
        if st.flags & (status::ZERO | status::DATA) != 0 {
            break st;
        }
        let next = match layer.child("backing") {
            Some(b) if layer.driver.supports_backing() => b.clone(),
            _ => {
                st.flags = 0;
                break st;
            }
        };
        layer = next;
        depth += 1;
    };
    let has_offset = st.flags & status::OFFSET_VALID != 0;
    Ok(MapEntry {
        start: offset,
        length: bytes,
        data: st.flags & status::DATA != 0,
        zero: st.flags & status::ZERO != 0,
        compressed: st.flags & status::COMPRESSED != 0,
        offset: has_offset.then_some(st.map),
        depth,
        present: st.flags & status::ALLOCATED != 0,
        filename: st
            .file
            .as_ref()
            .filter(|_| has_offset)
            .map(|f| f.filename.clone()),
    })
}

impl Img<'_> {
    pub(super) fn map(&self, argv: &[String]) -> i32 {
        const LONGS: &[(&str, char, bool)] = &[
            ("help", 'h', false),
            ("format", 'f', true),
            ("output", '\0', true),
            ("object", '\0', true),
            ("image-opts", '\0', false),
            ("force-share", 'U', false),
            ("start-offset", 's', true),
            ("max-length", 'l', true),
        ];
        let Ok(((opts, pos), extra)) = self.subcommand_args(argv, "f:s:l:hU", LONGS) else {
            return 1;
        };
        self.force_share.set(opts.iter().any(|(c, _)| *c == 'U'));
        let json = output_json(&extra);
        let mut fmt = None;
        let mut start_offset = 0;
        let mut max_length = None;
        for (c, a) in opts {
            let what = match c {
                'f' => {
                    fmt = Some(a);
                    continue;
                }
                's' => "start offset",
                'l' => "max length",
                _ => continue,
            };
            let n = match strtosz(&a) {
                Ok(n) if n <= i64::MAX as u64 => n,
                Err(NumError::Invalid) => {
                    self.error(&format!("Invalid {what} specified: '{a}'."));
                    return 1;
                }
                _ => {
                    self.error(&format!(
                        "Invalid {what} specified. Must be between 0 and 9223372036854775807."
                    ));
                    return 1;
                }
            };
            if c == 's' {
                start_offset = n;
            } else {
                max_length = Some(n);
            }
        }
        if pos.len() != 1 {
            self.error("Expecting one image file name");
            self.console
                .err("Try 'qemu-img map --help' for more info\n");
            return 1;
        }
        let name = &pos[0];
        let node = match self.open(name, fmt.as_deref(), true) {
            Ok(n) => n,
            Err(s) => return s,
        };
        if json {
            self.console.out("[");
        } else {
            self.console.out(&format!(
                "{:<16}{:<16}{:<16}{}\n",
                "Offset", "Length", "Mapped to", "File"
            ));
        }
        let Ok(mut length) = io::getlength(&node) else {
            self.error(&format!("Failed to get size for '{name}'"));
            return 1;
        };
        if let Some(m) = max_length {
            length = length.min(start_offset.saturating_add(m));
        }
        let mut curr = MapEntry {
            start: start_offset,
            ..MapEntry::default()
        };
        while curr.start + curr.length < length {
            let offset = curr.start + curr.length;
            let n = node.clone();
            let next = match block_on(
                async move { get_block_status(&n, offset, length - offset).await },
            ) {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    self.error(&format!("Could not read file metadata: {}", strerror(e)));
                    return 1;
                }
                None => return 1,
            };
            if curr.mergeable(&next) {
                curr.length += next.length;
                continue;
            }
            let mut next = next;
            if curr.length > 0 && self.dump_map_entry(json, &curr, Some(&mut next)).is_err() {
                return 1;
            }
            curr = next;
        }
        let ret = self.dump_map_entry(json, &curr, None);
        if json {
            self.console.out("]\n");
        }
        i32::from(ret.is_err())
    }

    /// qemu-img's dump_map_entry; human output may change `next` to merge more.
    fn dump_map_entry(
        &self,
        json: bool,
        e: &MapEntry,
        next: Option<&mut MapEntry>,
    ) -> Result<(), ()> {
        if json {
            self.console.out(&e.json());
            if next.is_some() {
                self.console.out(",\n");
            }
            return Ok(());
        }
        if e.data && e.offset.is_none() {
            self.error("File contains external, encrypted or compressed clusters.");
            return Err(());
        }
        if e.data && !e.zero {
            self.console.out(&format!(
                "{:<16}{:<16}{:<16}{}\n",
                hex(e.start),
                hex(e.length),
                hex(e.offset.unwrap_or(0)),
                e.filename.as_deref().unwrap_or("")
            ));
        }
        // human output does not tell zero from zero+data: merge them
        if let Some(n) = next
            && (!n.data || n.zero)
        {
            n.data = false;
            n.zero = true;
        }
        Ok(())
    }
}

/// C's `%#x`: `0x` prefix except for zero.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}
