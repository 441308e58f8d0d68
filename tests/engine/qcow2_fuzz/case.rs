//! One fuzz case: a base image, the mutations applied to it, the repair mode tried and the
//! qemu-io session run on it; all drawn from the case's seed.

use super::mutate::{self, Edit, Mutation};
use super::rng::Rng;
use super::seeds::{self, Base};

#[derive(Clone, Debug)]
pub struct Case {
    pub seed: u64,
    /// index into the base images
    pub base: usize,
    pub mutations: Vec<Mutation>,
    /// `leaks` or `all`
    pub repair: &'static str,
    /// the read-write qemu-io session
    pub session: Vec<String>,
}

impl Case {
    pub fn generate(seed: u64, bases: &[Base]) -> Case {
        let mut rng = Rng::new(seed);
        let base = rng.below(bases.len() as u64) as usize;
        let b = &bases[base];
        let n = rng.pick(&[1, 1, 1, 2, 2, 3]);
        let mut bytes = b.bytes.clone();
        let mut mutations = Vec::new();
        for _ in 0..n {
            let m = mutate::mutation(&bytes, &b.layout, &mut rng);
            mutate::apply(&mut bytes, &m.edits);
            mutations.push(m);
        }
        Case {
            seed,
            base,
            mutations,
            repair: rng.pick(&["leaks", "all"]),
            session: session(&mut rng, b),
        }
    }

    pub fn image(&self, bases: &[Base]) -> Vec<u8> {
        let mut bytes = bases[self.base].bytes.clone();
        for m in &self.mutations {
            mutate::apply(&mut bytes, &m.edits);
        }
        bytes
    }

    /// Whether a mutation of this field class (and op, if given) is part of the case (what an
    /// exclusion's case predicate asks; none does while every class is fixed).
    #[allow(dead_code)]
    pub fn mutates(&self, class: &str, op: Option<&str>) -> bool {
        self.mutations
            .iter()
            .any(|m| m.class == class && op.is_none_or(|o| m.op == o))
    }

    /// A shell script that rebuilds the mutated image from scratch (with the real qemu-img and
    /// qemu-io) and runs `steps` (qemu-img/qemu-io argument lists, each run on real QEMU and
    /// on ours, `$BF`, in copies of the directory).
    pub fn script(
        &self,
        bases: &[Base],
        steps: &[(&str, Vec<String>)],
        then_real_check: bool,
    ) -> String {
        let b = &bases[self.base];
        let mut s = format!(
            "#!/bin/sh\n# qcow2 fuzz case seed 0x{:x}, base image {}; run in an empty directory\n\
             # (BF = our binary, e.g. target/debug/blockfault)\nBF=${{BF:-blockfault}}\nset -e\n",
            self.seed, b.spec.name
        );
        s += &seeds::script(b.spec);
        for m in &self.mutations {
            s += &format!("# {}\n", m.what);
            for e in &m.edits {
                s += &match e {
                    Edit::Write { off, bytes } => {
                        let esc: String = bytes.iter().map(|x| format!("\\{x:03o}")).collect();
                        format!(
                            "printf '{esc}' | dd of=img.qcow2 bs=1 seek={off} conv=notrunc status=none\n"
                        )
                    }
                    Edit::Truncate { len } => format!("truncate -s {len} img.qcow2\n"),
                };
            }
        }
        let files: Vec<&str> = std::iter::once("img.qcow2")
            .chain(b.aux.iter().map(|(n, _)| n.as_str()))
            .collect();
        s += &format!(
            "set +e\nmkdir q o && cp {f} q/ && cp {f} o/\n",
            f = files.join(" ")
        );
        for (program, args) in steps {
            let words: Vec<String> = args.iter().map(|a| seeds::shell_quote(a)).collect();
            let line = words.join(" ");
            let sub = if *program == "qemu-io" { "io" } else { "img" };
            s += &format!(
                "(cd q && {program} {line}); echo \"qemu exit $?\"\n(cd o && \"$BF\" {sub} {line}); echo \"ours exit $?\"\n"
            );
        }
        if then_real_check {
            s += "for d in q o; do (cd $d && qemu-img check --output=json -f qcow2 img.qcow2); echo \"$d: qemu-img check exit $?\"; done\n";
        }
        s
    }
}

/// A short read-write session: reads, writes (plain, zero, compressed), discard, truncate,
/// flush, map; offsets inside the base image's virtual size.
fn session(rng: &mut Rng, b: &Base) -> Vec<String> {
    let cs = b.layout.cluster_size.max(512);
    let size = b.virtual_size.clamp(cs, 64 << 20);
    let mut cmds = Vec::new();
    for _ in 0..rng.range(3, 7) {
        let off = rng.below(size / 512) * 512;
        let len = (rng.range(1, (4 * cs / 512).min(512))) * 512;
        let len = len.min(size - off).max(512);
        let cluster_off = rng.below(size / cs) * cs;
        let cmd = match rng.weighted(&[4, 4, 2, 2, 2, 1, 1, 1]) {
            0 => format!("read {off} {len}"),
            1 => format!("write -P {} {off} {len}", rng.range(1, 255)),
            2 => format!("write -z {off} {len}"),
            3 => format!("write -c -P {} {cluster_off} {cs}", rng.range(1, 255)),
            4 => format!("discard {off} {len}"),
            5 => {
                let new = match rng.below(3) {
                    0 => size + cs * rng.range(1, 16),
                    1 => size / 2 / 512 * 512,
                    _ => size,
                };
                format!("truncate {new}")
            }
            6 => "flush".to_string(),
            _ => "map".to_string(),
        };
        cmds.push(cmd);
    }
    cmds
}
