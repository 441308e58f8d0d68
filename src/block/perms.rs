//! Block-graph permissions (QEMU's BLK_PERM_*): what each node's parents take on it and what
//! they let others take, which the file driver turns into image locks.
//!
//! qemu-io's BlockBackend takes CONSISTENT_READ, WRITE unless read-only, and then, for good,
//! whatever a command needs (`write`: WRITE, `truncate`: WRITE and RESIZE); it shares
//! everything. Each node holds what its parent passes down for its role (QEMU's
//! bdrv_default_perms). Whenever that changes, every node is checked, parents first (QEMU's
//! bdrv_node_refresh_perm): a node that is written must be writable, one written without the
//! right to resize it must have a size its request alignment divides (padding a request would
//! otherwise write past its end), and its driver may refuse (file-posix's image locks).

use super::io;
use super::node::{Child, ChildRole, Node};
use std::rc::Rc;

/// A set of QEMU's BLK_PERM_* bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms(u8);

impl Perms {
    pub const NONE: Self = Self(0);
    pub const CONSISTENT_READ: Self = Self(1);
    pub const WRITE: Self = Self(2);
    pub const WRITE_UNCHANGED: Self = Self(4);
    pub const RESIZE: Self = Self(8);
    pub const ALL: Self = Self(15);

    /// QEMU's bdrv_perm_names, one bit at a time, in bit order.
    const NAMES: [&'static str; 4] = ["consistent read", "write", "write unchanged", "resize"];

    /// The permission of one bit number (0: CONSISTENT_READ ... 3: RESIZE).
    pub const fn of_bit(bit: u32) -> Self {
        Self(1 << bit)
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn intersect(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// The permissions not in the set (within ALL).
    pub const fn complement(self) -> Self {
        Self(!self.0 & Self::ALL.0)
    }

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any permission of `other` is in the set.
    pub const fn has_any(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether the set lets its holder change the data (WRITE or WRITE_UNCHANGED).
    pub const fn writes(self) -> bool {
        self.has_any(Self(Self::WRITE.0 | Self::WRITE_UNCHANGED.0))
    }

    /// The single permissions in the set, lowest bit first, as (bit number, QEMU's name).
    pub fn each(self) -> impl Iterator<Item = (u32, &'static str)> {
        (0..4u32)
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(|i| (i, Self::NAMES[i as usize]))
    }

    /// The permission named as QEMU's BlockPermission enum names it (blkdebug's options).
    pub fn by_option_name(name: &str) -> Option<Self> {
        match name {
            "consistent-read" => Some(Self::CONSISTENT_READ),
            "write" => Some(Self::WRITE),
            "write-unchanged" => Some(Self::WRITE_UNCHANGED),
            "resize" => Some(Self::RESIZE),
            _ => None,
        }
    }
}

/// What a user or parent takes on a node, and what it lets others take (QEMU's perm and
/// shared_perm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub perm: Perms,
    pub shared: Perms,
}

impl Access {
    /// A parent that takes nothing and shares everything: a node being opened, before its
    /// own user attaches it.
    pub const UNUSED: Self = Self {
        perm: Perms::NONE,
        shared: Perms::ALL,
    };

    /// A BlockBackend as qemu-io and qemu-img open it (blk_new_open): reads consistently
    /// unless opened without I/O, writes when read-write, shares everything.
    pub fn user(read_write: bool, no_io: bool) -> Self {
        let mut perm = Perms::NONE;
        if !no_io {
            perm = Perms::CONSISTENT_READ;
            if read_write {
                perm = perm.union(Perms::WRITE);
            }
        }
        Self {
            perm,
            shared: Perms::ALL,
        }
    }
}

/// QEMU's message when a node written without RESIZE has a size its alignment does not divide.
pub const UNALIGNED_SIZE: &str = "Cannot get 'write' permission without 'resize': Image size is not a multiple of request alignment";

/// What a parent holding `held` takes on `child` and shares of it (QEMU's bdrv_default_perms
/// by role, then the parent driver's own additions). `parent_writable`: the parent node is
/// writable; `parent_no_io`: it was opened without I/O (qemu-img info).
fn child_access(child: &Child, held: Access, parent_writable: bool, parent_no_io: bool) -> Access {
    let Access {
        mut perm,
        mut shared,
    } = held;
    let storage = |perm: &mut Perms, shared: &mut Perms, metadata: bool| {
        if metadata {
            // A format writes its metadata whenever it is writable, and never lets anyone
            // else write or resize the file under it.
            if parent_writable {
                *perm = perm.union(Perms::WRITE).union(Perms::RESIZE);
            }
            if !parent_no_io {
                *perm = perm.union(Perms::CONSISTENT_READ);
            }
            *shared = shared.without(Perms::WRITE.union(Perms::RESIZE));
        }
        // Data: nobody else may resize it; unchanged writes may still change it (copied
        // clusters), and a write may grow it.
        *shared = shared.without(Perms::RESIZE);
        if perm.contains(Perms::WRITE_UNCHANGED) {
            *perm = perm.union(Perms::WRITE);
        }
        if perm.contains(Perms::WRITE) {
            *perm = perm.union(Perms::RESIZE);
        }
    };
    match child.role {
        ChildRole::Filtered => {}
        ChildRole::Data => storage(&mut perm, &mut shared, false),
        ChildRole::Image => storage(&mut perm, &mut shared, true),
        // A backing file is only read; it may change under a parent that copes with that.
        ChildRole::Cow => {
            perm = perm.intersect(Perms::CONSISTENT_READ);
            shared = if shared.contains(Perms::WRITE) {
                Perms::WRITE.union(Perms::RESIZE)
            } else {
                Perms::NONE
            }
            .union(Perms::CONSISTENT_READ)
            .union(Perms::WRITE_UNCHANGED);
        }
    }
    perm = perm.union(child.extra_perms);
    shared = shared.without(child.unshared_perms);
    // force-share=on on the child: whatever its parent shares, it shares everything.
    if child.node.force_share.get() {
        shared = Perms::ALL;
    }
    Access { perm, shared }
}

/// One node's part in a refresh: what its parent gives it, and whether it is read-only then.
pub struct Planned {
    pub node: Rc<Node>,
    pub access: Access,
    pub read_only: bool,
}

/// Gives `root` the access `held` of its user and every node below what its parent passes
/// down, checking each node in QEMU's order (a node before its children, children in the
/// order they were attached). `read_only` is the user's current mode; nodes of backing chains
/// keep their own read-only flag. On failure no node's permissions (or locks) change.
pub fn refresh(root: &Rc<Node>, held: Access, read_only: bool) -> Result<(), String> {
    let planned = plan(root, held, Some(read_only), &|n| n.flags().read_only);
    check_all(&planned)?;
    for p in &planned {
        p.node.driver.set_perm(&p.node, p.access);
    }
    apply(planned);
    Ok(())
}

/// A node's driver opened its children: each child is attached to it, which takes what the
/// still unused parent passes down (QEMU's bdrv_attach_child during the parent's open, when
/// nobody uses the parent yet). The locks this takes are what a half-open graph holds.
pub fn attach_children(node: &Rc<Node>) -> Result<(), String> {
    let flags = node.flags();
    for child in &node.children {
        let access = child_access(child, Access::UNUSED, !flags.read_only, flags.no_io);
        let planned = plan(&child.node, access, None, &|n| n.flags().read_only);
        check_all(&planned)?;
        for p in &planned {
            p.node.driver.set_perm(&p.node, p.access);
        }
        apply(planned);
    }
    Ok(())
}

/// Checks every planned node in order (the generic checks, then its driver's, which may take
/// locks); on the first failure, the nodes already checked drop what they prepared.
pub fn check_all(planned: &[Planned]) -> Result<(), String> {
    for (i, p) in planned.iter().enumerate() {
        let checked = check(&p.node, p.access.perm, p.read_only)
            .and_then(|()| p.node.driver.check_perm(&p.node, p.access));
        if let Err(e) = checked {
            abort(&planned[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// Drops what [`check_all`] prepared, newest first.
pub fn abort(planned: &[Planned]) {
    for p in planned.iter().rev() {
        p.node.driver.abort_perm(&p.node);
    }
}

/// What [`refresh`] gives each node, without checking or giving it: `read_only` is the user's
/// mode (None: every node's own flag decides), `own_read_only` a node's read-only flag where
/// it decides (the node's own, or the one a reopen is about to give it).
pub fn plan(
    root: &Rc<Node>,
    held: Access,
    read_only: Option<bool>,
    own_read_only: &dyn Fn(&Node) -> bool,
) -> Vec<Planned> {
    let mut plan = Vec::new();
    plan_node(root, held, read_only, own_read_only, &mut plan);
    plan
}

/// Gives the nodes the permissions [`plan`] found.
pub fn apply(plan: Vec<Planned>) {
    for p in plan {
        p.node.perms.set(p.access);
    }
}

/// `read_only`: None below a backing edge, where the node's own flag decides.
fn plan_node(
    node: &Rc<Node>,
    held: Access,
    read_only: Option<bool>,
    own_read_only: &dyn Fn(&Node) -> bool,
    plan: &mut Vec<Planned>,
) {
    let node_read_only = read_only.unwrap_or_else(|| own_read_only(node));
    plan.push(Planned {
        node: node.clone(),
        access: held,
        read_only: node_read_only,
    });
    let no_io = node.flags().no_io;
    for child in &node.children {
        let below = if child.role == ChildRole::Cow {
            None
        } else {
            read_only
        };
        let access = child_access(child, held, !node_read_only, no_io);
        plan_node(&child.node, access, below, own_read_only, plan);
    }
}

/// The generic part of QEMU's bdrv_node_refresh_perm.
pub fn check(node: &Node, perm: Perms, read_only: bool) -> Result<(), String> {
    if !perm.writes() {
        return Ok(());
    }
    if read_only {
        return Err("Block node is read-only".into());
    }
    // QEMU compares the size in whole sectors, as the block layer keeps it.
    let align = node.limits().request_alignment;
    if perm.contains(Perms::WRITE)
        && !perm.contains(Perms::RESIZE)
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
            unshared_perms: Perms::NONE,
        }
    }

    const C: Perms = Perms::CONSISTENT_READ;
    const W: Perms = Perms::WRITE;
    const R: Perms = Perms::RESIZE;

    fn rw() -> Access {
        Access::user(true, false)
    }

    #[test]
    fn roles_pass_permissions_as_qemu_does() {
        let f = child(ChildRole::Filtered, Perms::NONE);
        assert_eq!(child_access(&f, rw(), true, false), rw());
        let d = child(ChildRole::Data, Perms::NONE);
        assert_eq!(
            child_access(&d, rw(), true, false),
            Access {
                perm: C.union(W).union(R),
                shared: Perms::ALL.without(R)
            }
        );
        let i = child(ChildRole::Image, Perms::NONE);
        let unused = Access::UNUSED;
        assert_eq!(
            child_access(&i, unused, true, false),
            Access {
                perm: C.union(W).union(R),
                shared: Perms::ALL.without(W.union(R))
            }
        );
        // qemu-img info's read-only open without I/O takes nothing at all.
        assert_eq!(child_access(&i, unused, false, true).perm, Perms::NONE);
        let c = child(ChildRole::Cow, Perms::NONE);
        assert_eq!(
            child_access(&c, rw(), true, false),
            Access {
                perm: C,
                shared: Perms::ALL
            }
        );
        let taken = child(ChildRole::Filtered, R);
        assert_eq!(
            child_access(&taken, rw(), true, false).perm,
            C.union(W).union(R)
        );
        taken.node.force_share.set(true);
        assert_eq!(
            child_access(&taken, Access { perm: C, shared: C }, false, false).shared,
            Perms::ALL
        );
    }

    #[test]
    fn names_follow_bit_order() {
        let names: Vec<_> = Perms::ALL.each().collect();
        assert_eq!(
            names,
            [
                (0, "consistent read"),
                (1, "write"),
                (2, "write unchanged"),
                (3, "resize")
            ]
        );
    }
}
