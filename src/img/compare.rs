//! `qemu-img compare`: both images read through the block layer, first differing sector named.

use super::Img;
use crate::block::executor::block_on;
use crate::block::node::Node;
use std::rc::Rc;

impl Img<'_> {
    fn read_all(node: &Rc<Node>) -> Result<Vec<u8>, i32> {
        let n = node.clone();
        block_on(async move {
            let len = n.getlength()?;
            let mut buf = vec![0u8; len as usize];
            crate::block::io::preadv(&n, 0, &mut buf).await?;
            Ok(buf)
        })
        .unwrap_or(Err(libc::EIO))
    }

    pub(super) fn compare(&self, argv: &[String]) -> i32 {
        let Ok((opts, pos)) = self.opts(argv, "hf:F:T:pqsU") else {
            return 1;
        };
        self.force_share.set(opts.iter().any(|(c, _)| *c == 'U'));
        let f1 = opts
            .iter()
            .find(|(c, _)| *c == 'f')
            .map(|(_, a)| a.as_str());
        let quiet = opts.iter().any(|(c, _)| *c == 'q');
        let say = |text: &str| {
            if !quiet {
                self.console.out(text);
            }
        };
        let f2 = opts
            .iter()
            .find(|(c, _)| *c == 'F')
            .map(|(_, a)| a.as_str());
        if pos.len() != 2 {
            self.error("Expecting two image file names");
            return 1;
        }
        // The second image is only opened once the first is.
        let (a, b) = match self
            .open(&pos[0], f1, true)
            .and_then(|a| Ok((a, self.open(&pos[1], f2, true)?)))
        {
            Ok(pair) => pair,
            Err(_) => return 2,
        };
        let (Ok(da), Ok(db)) = (Self::read_all(&a), Self::read_all(&b)) else {
            self.error("Error while reading");
            return 2;
        };
        let common = da.len().min(db.len());
        let strict = opts.iter().any(|(c, _)| *c == 's');
        if strict && da.len() != db.len() {
            say("Strict mode: Image size mismatch!\n");
            return 1;
        }
        // -s: the first offset where the two block statuses differ; QEMU walks both images
        // chunk by chunk, so content that differs before it is reported first.
        let status_mismatch = if strict {
            match first_status_mismatch(&a, &b, common as u64) {
                Ok(m) => m,
                Err(which) => {
                    self.error(&format!("Sector allocation test failed for {}", pos[which]));
                    return 3;
                }
            }
        } else {
            None
        };
        let checked = status_mismatch.map_or(common, |o| o as usize);
        // qemu-img compares sector by sector and names the first differing sector.
        let sector = |i: usize| i / 512 * 512;
        if let Some(i) = da[..checked]
            .iter()
            .zip(&db[..checked])
            .position(|(x, y)| x != y)
        {
            say(&format!("Content mismatch at offset {}!\n", sector(i)));
            return 1;
        }
        if let Some(offset) = status_mismatch {
            say(&format!(
                "Strict mode: Offset {offset} block status mismatch!\n"
            ));
            return 1;
        }
        if da.len() != db.len() {
            say("Warning: Image size mismatch!\n");
            let longer = if da.len() > db.len() { &da } else { &db };
            if let Some(i) = longer[common..].iter().position(|&x| x != 0) {
                say(&format!(
                    "Content mismatch at offset {}!\n",
                    sector(common + i)
                ));
                return 1;
            }
        }
        say("Images are identical.\n");
        0
    }
}

/// Where the block statuses (QEMU's `bdrv_block_status_above` flags) of the two images first
/// differ below `end`; `Err(i)` names the image (0 or 1) whose status query failed.
fn first_status_mismatch(a: &Rc<Node>, b: &Rc<Node>, end: u64) -> Result<Option<u64>, usize> {
    let (a, b) = (a.clone(), b.clone());
    block_on(async move {
        let mut offset = 0;
        while offset < end {
            let (sa, _) =
                crate::block::io::block_status_above(&a, None, true, offset, end - offset)
                    .await
                    .map_err(|_| 0usize)?;
            let (sb, _) =
                crate::block::io::block_status_above(&b, None, true, offset, end - offset)
                    .await
                    .map_err(|_| 1usize)?;
            if sa.flags != sb.flags {
                return Ok(Some(offset));
            }
            let chunk = sa.pnum.min(sb.pnum);
            if chunk == 0 {
                return Ok(None);
            }
            offset += chunk;
        }
        Ok(None)
    })
    .unwrap_or(Err(0))
}
