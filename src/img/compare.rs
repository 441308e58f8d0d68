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
        let (a, b) = match (self.open(&pos[0], f1, true), self.open(&pos[1], f2, true)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return 2,
        };
        let (Ok(da), Ok(db)) = (Self::read_all(&a), Self::read_all(&b)) else {
            self.error("Error while reading");
            return 2;
        };
        let common = da.len().min(db.len());
        // qemu-img compares sector by sector and names the first differing sector.
        let sector = |i: usize| i / 512 * 512;
        if let Some(i) = da[..common]
            .iter()
            .zip(&db[..common])
            .position(|(x, y)| x != y)
        {
            say(&format!("Content mismatch at offset {}!\n", sector(i)));
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
