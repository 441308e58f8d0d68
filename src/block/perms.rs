//! Block-graph permissions (QEMU's BLK_PERM_*), as far as they change what happens.
//!
//! qemu-io's BlockBackend takes WRITE at open unless read-only, and then, for good, whatever a
//! command needs (`write`: WRITE, `truncate`: WRITE and RESIZE). Each node holds what its parent
//! passes down for its role. Whenever that changes, every node is checked, parents first
//! (QEMU's bdrv_node_refresh_perm): a node that is written must be writable, and one written
//! without the right to resize it must have a size its request alignment divides, since
//! padding a request to the alignment would otherwise write past its end.

use super::io;
use super::node::{Child, ChildRole, Node};
use std::rc::Rc;

/// The permissions that matter here. `write` stands for WRITE and WRITE_UNCHANGED together:
/// every check and every rule treats them alike.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub resize: bool,
}

impl Perms {
    pub const NONE: Self = Self {
        write: false,
        resize: false,
    };
    pub const WRITE: Self = Self {
        write: true,
        resize: false,
    };

    pub fn union(self, other: Self) -> Self {
        Self {
            write: self.write || other.write,
            resize: self.resize || other.resize,
        }
    }

    pub fn contains(self, other: Self) -> bool {
        self.union(other) == self
    }
}

/// QEMU's message when a node written without RESIZE has a size its alignment does not divide.
pub const UNALIGNED_SIZE: &str = "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment";

/// What a parent holding `held` takes on `child` (QEMU's bdrv_default_perms by role; raw's own
/// child_perm keeps WRITE and RESIZE to what its parents hold, which the filter role does).
/// `parent_writable` is whether the parent node itself is writable.
fn child_perms(child: &Child, held: Perms, parent_writable: bool) -> Perms {
    let perms = match child.role {
        ChildRole::Filtered => held,
        // A format may grow a data file by writing past its end.
        ChildRole::Data => Perms {
            write: held.write,
            resize: held.resize || held.write,
        },
        // Metadata is written whenever the format node is writable, guest writes or not.
        ChildRole::Image => {
            let write = held.write || parent_writable;
            Perms {
                write,
                resize: held.resize || write,
            }
        }
        ChildRole::Cow => Perms::NONE,
    };
    perms.union(child.extra_perms)
}

/// Gives `root` the permissions `held` of its user and every node below what its parent passes
/// down, checking each node in QEMU's order (a node before its children, children in the order
/// they were attached). `read_only` is the user's current mode; nodes of backing chains keep
/// their own read-only flag. On failure no node's permissions change.
pub fn refresh(root: &Rc<Node>, held: Perms, read_only: bool) -> Result<(), String> {
    let planned = plan(root, held, read_only, &|n| n.flags().read_only)?;
    for (node, _) in &planned {
        node.driver.check_perm(node)?;
    }
    for (node, _) in &planned {
        node.driver.set_perm(node);
    }
    apply(planned);
    Ok(())
}

/// What [`refresh`] gives each node, checked, without giving it: `own_read_only` is a node's
/// read-only flag where it decides (the node's own, or the one a reopen is about to give it).
pub fn plan(
    root: &Rc<Node>,
    held: Perms,
    read_only: bool,
    own_read_only: &dyn Fn(&Node) -> bool,
) -> Result<Vec<(Rc<Node>, Perms)>, String> {
    let mut plan = Vec::new();
    plan_node(root, held, Some(read_only), own_read_only, &mut plan)?;
    Ok(plan)
}

/// Gives the nodes the permissions [`plan`] found.
pub fn apply(plan: Vec<(Rc<Node>, Perms)>) {
    for (node, perms) in plan {
        node.perms.set(perms);
    }
}

/// `read_only`: None below a backing edge, where the node's own flag decides.
fn plan_node(
    node: &Rc<Node>,
    held: Perms,
    read_only: Option<bool>,
    own_read_only: &dyn Fn(&Node) -> bool,
    plan: &mut Vec<(Rc<Node>, Perms)>,
) -> Result<(), String> {
    let node_read_only = read_only.unwrap_or_else(|| own_read_only(node));
    check(node, held, node_read_only)?;
    plan.push((node.clone(), held));
    for child in &node.children {
        let below = if child.role == ChildRole::Cow {
            None
        } else {
            read_only
        };
        let perms = child_perms(child, held, !node_read_only);
        plan_node(&child.node, perms, below, own_read_only, plan)?;
    }
    Ok(())
}

fn check(node: &Node, held: Perms, read_only: bool) -> Result<(), String> {
    if !held.write {
        return Ok(());
    }
    if read_only {
        return Err("Block node is read-only".into());
    }
    // QEMU compares the size in whole sectors, as the block layer keeps it.
    let align = node.limits().request_alignment;
    if !held.resize
        && let Ok(len) = io::getlength(node)
        && !len.is_multiple_of(align)
    {
        return Err(UNALIGNED_SIZE.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(role: ChildRole, extra: Perms) -> Child {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let driver = super::super::file::FileDriver::open(
            super::super::file::HostKind::File,
            &path,
            "f",
            true,
            false,
            false,
        )
        .unwrap();
        Child {
            name: "x",
            node: Rc::new(Node::new(Box::new(driver), Vec::new(), "f".into())),
            writable: true,
            primary: true,
            role,
            extra_perms: extra,
        }
    }

    #[test]
    fn roles_pass_permissions_as_qemu_does() {
        let rw = Perms::WRITE;
        let resize = Perms {
            write: false,
            resize: true,
        };
        let both = rw.union(resize);
        let f = child(ChildRole::Filtered, Perms::NONE);
        assert_eq!(child_perms(&f, rw, true), rw);
        assert_eq!(child_perms(&f, both, true), both);
        let d = child(ChildRole::Data, Perms::NONE);
        assert_eq!(child_perms(&d, rw, true), both);
        assert_eq!(child_perms(&d, Perms::NONE, true), Perms::NONE);
        let i = child(ChildRole::Image, Perms::NONE);
        assert_eq!(child_perms(&i, Perms::NONE, true), both);
        assert_eq!(child_perms(&i, Perms::NONE, false), Perms::NONE);
        let c = child(ChildRole::Cow, Perms::NONE);
        assert_eq!(child_perms(&c, both, true), Perms::NONE);
        let taken = child(ChildRole::Filtered, resize);
        assert_eq!(child_perms(&taken, rw, true), both);
    }
}
