//! `qemu-img map` (human and `--output=json`) over the block layer's block status.

use super::Img;
use crate::block::driver::status;
use crate::block::executor::block_on;

impl Img<'_> {
    pub(super) fn map(&self, argv: &[String]) -> i32 {
        let mut json = false;
        let mut args = Vec::new();
        for a in argv {
            match a.as_str() {
                "--output=json" => json = true,
                "--output=human" => json = false,
                _ => args.push(a.clone()),
            }
        }
        let Ok((opts, pos)) = self.opts(&args, "f:hU") else {
            return 1;
        };
        let fmt = opts
            .iter()
            .find(|(c, _)| *c == 'f')
            .map(|(_, a)| a.as_str());
        let Some(name) = pos.first() else {
            self.error("Expecting one image file name");
            return 1;
        };
        let node = match self.open(name, fmt, true) {
            Ok(n) => n,
            Err(s) => return s,
        };
        let n = node.clone();
        let extents = block_on(async move {
            let total = n.getlength()?;
            let mut out: Vec<(u64, u64, u32, u64)> = Vec::new();
            let mut offset = 0;
            while offset < total {
                let st = crate::block::io::block_status(&n, true, offset, total - offset).await?;
                if st.pnum == 0 {
                    break;
                }
                let flags = st.flags & (status::DATA | status::ZERO | status::OFFSET_VALID);
                match out.last_mut() {
                    Some(last)
                        if last.2 == flags
                            && last.0 + last.1 == offset
                            && (flags & status::OFFSET_VALID == 0 || last.3 + last.1 == st.map) =>
                    {
                        last.1 += st.pnum
                    }
                    _ => out.push((offset, st.pnum, flags, st.map)),
                }
                offset += st.pnum;
            }
            Ok::<_, i32>(out)
        });
        let extents = match extents {
            Some(Ok(e)) => e,
            _ => {
                self.error("Failed to get block status");
                return 1;
            }
        };
        if json {
            let rows: Vec<String> = extents
                .iter()
                .map(|(start, len, flags, map)| {
                    let offset = if flags & status::OFFSET_VALID != 0 {
                        format!(", \"offset\": {map}")
                    } else {
                        String::new()
                    };
                    format!(
                        "{{ \"start\": {start}, \"length\": {len}, \"depth\": 0, \"present\": true, \"zero\": {}, \"data\": {}, \"compressed\": false{offset}}}",
                        flags & status::ZERO != 0,
                        flags & status::DATA != 0
                    )
                })
                .collect();
            self.console.out(&format!("[{}]\n", rows.join(",\n")));
        } else {
            self.console.out(&format!(
                "{:<16}{:<16}{:<16}{}\n",
                "Offset", "Length", "Mapped to", "File"
            ));
            for (start, len, flags, map) in extents {
                // dump_map_entry: data without a host offset (compressed, encrypted, external)
                // cannot be shown; zero extents are not listed.
                if flags & status::DATA != 0 && flags & status::OFFSET_VALID == 0 {
                    self.error("File contains external, encrypted or compressed clusters.");
                    return 1;
                }
                if flags & status::DATA != 0 && flags & status::ZERO == 0 {
                    self.console.out(&format!(
                        "{:<16}{:<16}{:<16}{name}\n",
                        hex(start),
                        hex(len),
                        hex(map)
                    ));
                }
            }
        }
        0
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
