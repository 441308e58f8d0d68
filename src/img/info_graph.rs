//! `qemu-img info` of a filename the block layer parses (`blkdebug:CFG:IMG`, `blkverify:A:B`,
//! `json:{...}`): the node graph as qemu-img opens it (no backing file, no data file), each
//! node followed by its children, as qemu-img prints a BlockGraphInfo.

use super::Img;
use super::info::disk_size_str;
use super::json::{Json, dict};
use super::qcow2::info::size_to_str;
use crate::block::io::get_info_unsupported;
use crate::block::node::Node;
use crate::block::open::Options;
use crate::block::qcow2::Qcow2;
use crate::block::qcow2::image_file::NodeFile;
use serde_json::Value;
use std::rc::Rc;

/// One node's human block (children included, unindented) and its JSON.
type NodeInfo = (String, Json);

impl Img<'_> {
    /// The graph under `name`, and the top node's backing file (path, format) for a chain.
    #[allow(clippy::type_complexity)]
    pub(super) fn describe_graph(
        &self,
        name: &str,
        fmt: Option<&str>,
    ) -> Result<(String, Json, Option<(String, Option<String>)>), ()> {
        let mut opts = Options::new();
        // qemu-img info opens with BDRV_O_NO_BACKING (and without I/O: `info` set no_io)
        opts.insert("backing".into(), Value::Null);
        let node = self
            .open_with_options(name, fmt, true, false, opts)
            .map_err(|_| ())?;
        let mut backing = None;
        let (text, info) = self.node_info(&node, "", &mut backing)?;
        Ok((text, info, backing))
    }

    /// `node`'s block and JSON; `path` is the child path above it (`file/`), and the top
    /// qcow2 node's backing file lands in `backing`.
    fn node_info(
        &self,
        node: &Rc<Node>,
        path: &str,
        backing: &mut Option<(String, Option<String>)>,
    ) -> Result<NodeInfo, ()> {
        // qemu-img opens the top node without I/O (no data file) and without a backing file;
        // neither flag reaches the nodes below, which keep both
        let top = path.is_empty();
        let mut children: Vec<_> = node
            .children
            .iter()
            .filter(|c| !(top && c.name == "data-file"))
            .collect();
        // QEMU lists a node's children newest first: the reverse of the order its drivers
        // attach them (a format's file, then its data file, then its backing file)
        children.sort_by_key(|c| std::cmp::Reverse(attach_order(c.name)));
        let disk = node.driver.allocated_file_size(node).ok();
        let len = node.getlength().unwrap_or(0);
        let name = node.filename.as_str();
        let format = node.driver.format_name();
        let (mut text, mut fields) = if node.driver_as::<Qcow2>().is_some() {
            let (text, info, b) =
                self.describe_qcow2(name, &NodeFile(bottom(node.file())), disk)?;
            if top {
                *backing = b;
            }
            let Json::Dict(fields) = info else {
                unreachable!("describe_qcow2 answers a dict")
            };
            (text, fields)
        } else {
            let leaf = children.is_empty();
            let text = if leaf {
                format!(
                    "filename: {name}\nprotocol type: {}\nfile length: {} ({len} bytes)\ndisk size: {}\n",
                    node.driver.protocol_name().unwrap_or(format),
                    size_to_str(len),
                    disk_size_str(disk)
                )
            } else {
                format!(
                    "image: {name}\nfile format: {format}\nvirtual size: {} ({len} bytes)\ndisk size: {}\n",
                    size_to_str(len),
                    disk_size_str(disk)
                )
            };
            // the file driver's format-specific information is an empty `file` block
            let specific = (format == "file").then(|| {
                dict(vec![
                    ("type", Some(Json::Str("file".into()))),
                    ("data", Some(Json::Dict(vec![]))),
                ])
            });
            let Json::Dict(fields) = dict(vec![
                ("filename", Some(Json::Str(name.to_string()))),
                ("format", Some(Json::Str(format.into()))),
                // bdrv_get_info's answer; drivers without one (null-co) have no dirty flag
                (
                    "dirty-flag",
                    (!get_info_unsupported(node)).then_some(Json::Bool(false)),
                ),
                ("actual-size", disk.map(|d| Json::Int(d as i64))),
                ("virtual-size", Some(Json::Int(len as i64))),
                ("format-specific", specific),
            ]) else {
                unreachable!("dict answers a dict")
            };
            (text, fields)
        };
        let mut list = Vec::new();
        for c in &children {
            let (ctext, cinfo) = self.node_info(&c.node, &format!("{path}{}/", c.name), backing)?;
            text.push_str(&format!("Child node '/{path}{}':\n", c.name));
            for line in ctext.lines() {
                text.push_str(&format!("    {line}\n"));
            }
            list.push(dict(vec![
                ("name", Some(Json::Str(c.name.into()))),
                ("info", Some(cinfo)),
            ]));
        }
        fields.push(("children".into(), Json::List(list)));
        Ok((text, Json::Dict(fields)))
    }
}

/// The protocol node under any filters: the bytes a format reads, without the filters' rules
/// (info's own reads are not the format's requests, so blkdebug must not see them).
fn bottom(node: &Rc<Node>) -> Rc<Node> {
    let mut n = node.clone();
    while n.driver.is_filter() {
        let Some(c) = n.primary_child().cloned() else {
            break;
        };
        n = c;
    }
    n
}

/// When QEMU's drivers attach a child of this name, relative to its siblings.
fn attach_order(child: &str) -> u8 {
    match child {
        "data-file" | "test" => 1,
        "backing" => 2,
        _ => 0,
    }
}
