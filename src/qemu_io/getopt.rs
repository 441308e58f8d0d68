//! GNU `getopt` as qemu-io command handlers see it.
//!
//! qemu-io resets `optind = 0` before each command, so every command gets a fresh scan of its own
//! argv (argv\[0\] is the command name, which prefixes error messages). The GNU default
//! ("permute") ordering applies:
//!
//! * options may follow positionals (`read 0 16 -v`); positionals keep their relative order;
//! * flags cluster (`-qv`); an option argument may be attached (`-P0x41`) or be the next
//!   element (`-P 0x41`), whatever that element looks like (`-P --` takes `--`);
//! * `--` ends the options, everything after it is positional; a lone `-` is positional;
//! * `-1` is an option cluster, so negative numbers are option errors (`invalid option -- '1'`);
//! * `--foo` is not a long option here: it is the cluster `-`, `f`, `o`, `o`, unless long options
//!   are given ([`Getopt::with_long`], GNU `getopt_long` as qemu-io's own command line uses it):
//!   then `--name` or any unambiguous prefix of a name is that option, with its argument attached
//!   (`--cache=none`) or in the next element (`--cache none`).
//!
//! Handlers pull options in order and usually stop at the first problem, so errors are yielded
//! in sequence, interleaved with valid options exactly where getopt reports them.
//!
//! Limitation: C works on bytes, we on `char`s; a non-ASCII option letter is reported as the
//! whole character rather than its first byte.

/// The result of one `getopt` call: an option and its argument, or getopt's stderr message
/// (without the newline), e.g. `read: invalid option -- 'x'`.
pub type GetoptItem = Result<(char, Option<String>), String>;

/// A cursor over one command's argv. Iterate to get the options; once the iterator has returned
/// `None`, [`Getopt::positionals`] holds the non-option arguments in order.
pub struct Getopt<'a, S: AsRef<str>> {
    argv: &'a [S],
    optstring: &'a str,
    /// Next argv element to examine.
    optind: usize,
    /// Byte offset into `argv[optind - 1]` when in the middle of a cluster like `-qv`.
    nextchar: Option<usize>,
    /// Non-options seen so far, in order.
    positionals: Vec<String>,
    done: bool,
    longopts: &'a [LongOpt],
}

/// One entry of `getopt_long`'s option table. Options with no short form get a `val` outside
/// the option string (QEMU uses values from 256 up; any `char` not in the string does here).
#[derive(Clone, Copy, Debug)]
pub struct LongOpt {
    pub name: &'static str,
    pub takes_arg: bool,
    pub val: char,
}

impl<'a, S: AsRef<str>> Getopt<'a, S> {
    /// `argv[0]` is the command name; `optstring` is as for C (`"bCl:pP:qrs:v"`), without GNU's
    /// leading `+`/`-`/`:` modifiers, which qemu-io does not use.
    pub fn new(argv: &'a [S], optstring: &'a str) -> Self {
        Getopt {
            argv,
            optstring,
            optind: 1,
            nextchar: None,
            positionals: Vec::new(),
            done: false,
            longopts: &[],
        }
    }

    /// As `getopt_long` with this option table, which is searched in order (the order of the
    /// candidates an ambiguous abbreviation's message lists).
    pub fn with_long(argv: &'a [S], optstring: &'a str, longopts: &'a [LongOpt]) -> Self {
        Getopt {
            longopts,
            ..Getopt::new(argv, optstring)
        }
    }

    /// The non-option arguments in their original relative order (what C finds in
    /// `argv[optind..]` after getopt returned -1). Complete only once iteration has ended.
    pub fn positionals(&self) -> &[String] {
        &self.positionals
    }

    /// Whether iteration has ended (all options consumed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn cmd(&self) -> &str {
        self.argv.first().map_or("", |s| s.as_ref())
    }

    /// `None` if `c` is not a valid option, else whether it takes an argument.
    fn takes_arg(&self, c: char) -> Option<bool> {
        // ':' is never an option letter, whatever the string contains.
        if c == ':' {
            return None;
        }
        let pos = self.optstring.find(c)?;
        Some(self.optstring[pos + c.len_utf8()..].starts_with(':'))
    }
}

impl<S: AsRef<str>> Getopt<'_, S> {
    /// glibc's long option lookup for `--text` (`optind` already past it): an exact name, else
    /// the only name `text` abbreviates. Messages name the option as typed when it is unknown
    /// or ambiguous, by its full name otherwise.
    fn long_option(&mut self, text: &str) -> GetoptItem {
        let cmd = self.cmd().to_owned();
        let (name, attached) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        let found = match self.longopts.iter().find(|o| o.name == name) {
            Some(o) => *o,
            None => {
                let candidates: Vec<&LongOpt> = self
                    .longopts
                    .iter()
                    .filter(|o| o.name.starts_with(name))
                    .collect();
                let Some(&first) = candidates.first() else {
                    return Err(format!("{cmd}: unrecognized option '--{text}'"));
                };
                // Abbreviating several names is fine if they all mean the same option; else
                // glibc lists the first and every one that differs from it.
                let differ = |o: &&LongOpt| o.val != first.val || o.takes_arg != first.takes_arg;
                if !candidates.iter().any(differ) {
                    *first
                } else {
                    let names: String = std::iter::once(first)
                        .chain(candidates.iter().copied().filter(differ))
                        .map(|o| format!(" '--{}'", o.name))
                        .collect();
                    return Err(format!(
                        "{cmd}: option '--{text}' is ambiguous; possibilities:{names}"
                    ));
                }
            }
        };
        match (attached, found.takes_arg) {
            (Some(value), true) => Ok((found.val, Some(value.to_owned()))),
            (Some(_), false) => Err(format!(
                "{cmd}: option '--{}' doesn't allow an argument",
                found.name
            )),
            (None, false) => Ok((found.val, None)),
            (None, true) => match self.argv.get(self.optind) {
                Some(next) => {
                    let value = next.as_ref().to_owned();
                    self.optind += 1;
                    Ok((found.val, Some(value)))
                }
                None => Err(format!(
                    "{cmd}: option '--{}' requires an argument",
                    found.name
                )),
            },
        }
    }
}

impl<S: AsRef<str>> Iterator for Getopt<'_, S> {
    type Item = GetoptItem;

    fn next(&mut self) -> Option<GetoptItem> {
        if self.done {
            return None;
        }
        let start = match self.nextchar {
            Some(pos) => pos,
            None => loop {
                // Find the next option element, setting non-options aside.
                let Some(arg) = self.argv.get(self.optind).map(|s| s.as_ref()) else {
                    self.done = true;
                    return None;
                };
                self.optind += 1;
                if arg == "--" {
                    self.positionals.extend(
                        self.argv[self.optind..]
                            .iter()
                            .map(|s| s.as_ref().to_owned()),
                    );
                    self.optind = self.argv.len();
                    self.done = true;
                    return None;
                }
                if !self.longopts.is_empty() && arg.len() > 2 && arg.starts_with("--") {
                    return Some(self.long_option(&arg[2..]));
                }
                if arg.len() > 1 && arg.starts_with('-') {
                    break 1;
                }
                self.positionals.push(arg.to_owned());
            },
        };
        let elem = self.argv[self.optind - 1].as_ref();
        let c = elem[start..]
            .chars()
            .next()
            .expect("cluster position is before the end");
        let after = start + c.len_utf8();
        let rest = &elem[after..];
        self.nextchar = (!rest.is_empty()).then_some(after);
        let cmd = self.cmd();
        match self.takes_arg(c) {
            None => Some(Err(format!("{cmd}: invalid option -- '{c}'"))),
            Some(false) => Some(Ok((c, None))),
            Some(true) if !rest.is_empty() => {
                // Attached argument: the rest of the cluster.
                let optarg = rest.to_owned();
                self.nextchar = None;
                Some(Ok((c, Some(optarg))))
            }
            Some(true) => match self.argv.get(self.optind) {
                Some(next) => {
                    let optarg = next.as_ref().to_owned();
                    self.optind += 1;
                    Some(Ok((c, Some(optarg))))
                }
                None => Some(Err(format!("{cmd}: option requires an argument -- '{c}'"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const READ_OPTS: &str = "bCl:pP:qrs:v";

    /// Every item, then the positionals.
    fn run(cmdline: &str, optstring: &str) -> (Vec<GetoptItem>, Vec<String>) {
        let argv: Vec<&str> = cmdline.split(' ').filter(|s| !s.is_empty()).collect();
        let mut g = Getopt::new(&argv, optstring);
        let items: Vec<_> = g.by_ref().collect();
        assert!(g.is_done());
        (items, g.positionals().to_vec())
    }

    fn opt(c: char, arg: Option<&str>) -> GetoptItem {
        Ok((c, arg.map(str::to_owned)))
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn permutes_options_after_positionals() {
        let (items, pos) = run("read 0 16 -v", READ_OPTS);
        assert_eq!(items, vec![opt('v', None)]);
        assert_eq!(pos, strings(&["0", "16"]));
    }

    #[test]
    fn clusters_and_arguments() {
        let (items, pos) = run("read -qv -P0x41 0 -s 4 1 -l 2", READ_OPTS);
        assert_eq!(
            items,
            vec![
                opt('q', None),
                opt('v', None),
                opt('P', Some("0x41")),
                opt('s', Some("4")),
                opt('l', Some("2")),
            ]
        );
        assert_eq!(pos, strings(&["0", "1"]));
        // A separate argument is taken verbatim, even if it looks like an option or `--`.
        let (items, pos) = run("read -P -- 0 1", READ_OPTS);
        assert_eq!(items, vec![opt('P', Some("--"))]);
        assert_eq!(pos, strings(&["0", "1"]));
        let (items, _) = run("read -Pq 0 1", READ_OPTS);
        assert_eq!(items, vec![opt('P', Some("q"))]);
        let (items, _) = run("read -vP 5 0 1", READ_OPTS);
        assert_eq!(items, vec![opt('v', None), opt('P', Some("5"))]);
    }

    #[test]
    fn double_dash_and_lone_dash() {
        let (items, pos) = run("read 0 -- -1", READ_OPTS);
        assert!(items.is_empty());
        assert_eq!(pos, strings(&["0", "-1"]));
        let (items, pos) = run("read 0 1 -- -q", READ_OPTS);
        assert!(items.is_empty());
        assert_eq!(pos, strings(&["0", "1", "-q"]));
        let (_, pos) = run("read -- 0 -- 1", READ_OPTS);
        assert_eq!(pos, strings(&["0", "--", "1"]));
        let (items, pos) = run("read - 0 -q 1", READ_OPTS);
        assert_eq!(items, vec![opt('q', None)]);
        assert_eq!(pos, strings(&["-", "0", "1"]));
    }

    /// Messages as qemu-io 10.0.2 prints them on stderr.
    #[test]
    fn errors_match_qemu_io() {
        let (items, _) = run("read -x 0 1", READ_OPTS);
        assert_eq!(items, vec![Err("read: invalid option -- 'x'".into())]);
        let (items, _) = run("read 0 1 -P", READ_OPTS);
        assert_eq!(
            items,
            vec![Err("read: option requires an argument -- 'P'".into())]
        );
        let (items, _) = run("read 0 -1", READ_OPTS);
        assert_eq!(items, vec![Err("read: invalid option -- '1'".into())]);
        // `--foo` is a cluster starting with '-'.
        let (items, _) = run("read --foo 0 1", READ_OPTS);
        assert_eq!(items[0], Err("read: invalid option -- '-'".into()));
        let (items, _) = run("read -: 0 1", READ_OPTS);
        assert_eq!(items, vec![Err("read: invalid option -- ':'".into())]);
        let (items, _) = run("open -f x", "snCro:kt:d:i:U");
        assert_eq!(items, vec![Err("open: invalid option -- 'f'".into())]);
        // Errors come in order with the valid options around them, and scanning goes on.
        let (items, pos) = run("read 0 -q1 -v 1", READ_OPTS);
        assert_eq!(
            items,
            vec![
                opt('q', None),
                Err("read: invalid option -- '1'".into()),
                opt('v', None)
            ]
        );
        assert_eq!(pos, strings(&["0", "1"]));
        let (items, _) = run("read -P 300 -x 0 1", READ_OPTS);
        assert_eq!(
            items,
            vec![
                opt('P', Some("300")),
                Err("read: invalid option -- 'x'".into())
            ]
        );
    }

    #[test]
    fn no_options_at_all() {
        let argv = ["flush"];
        let mut g = Getopt::new(&argv, "");
        assert_eq!(g.next(), None);
        assert_eq!(g.next(), None);
        assert!(g.positionals().is_empty());
        let empty: [&str; 0] = [];
        assert_eq!(Getopt::new(&empty, "q").next(), None);
    }

    /// glibc's own getopt, as the oracle for the property test. It keeps global state, so
    /// calls are serialized.
    mod glibc {
        use std::ffi::{CStr, CString, c_char, c_int};
        use std::sync::Mutex;

        unsafe extern "C" {
            static mut optind: c_int;
            static mut opterr: c_int;
            static mut optopt: c_int;
            static mut optarg: *mut c_char;
        }

        static LOCK: Mutex<()> = Mutex::new(());

        /// Items as (option, argument) or Err(optopt), then argv[optind..].
        #[allow(clippy::type_complexity)]
        pub fn getopt(
            argv: &[String],
            optstring: &str,
        ) -> (Vec<Result<(char, Option<String>), char>>, Vec<String>) {
            let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let owned: Vec<CString> = argv
                .iter()
                .map(|a| CString::new(a.as_str()).unwrap())
                .collect();
            let mut ptrs: Vec<*mut c_char> =
                owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
            ptrs.push(std::ptr::null_mut());
            let opts = CString::new(optstring).unwrap();
            let mut items = Vec::new();
            // SAFETY: getopt's globals are only touched under LOCK; the strings in `owned`
            // outlive the calls, and glibc only permutes the pointer array.
            unsafe {
                optind = 0;
                opterr = 0;
                loop {
                    let c = libc::getopt(ptrs.len() as c_int - 1, ptrs.as_ptr(), opts.as_ptr());
                    if c == -1 {
                        break;
                    }
                    if c == '?' as c_int {
                        items.push(Err(optopt as u8 as char));
                    } else {
                        let arg = (!optarg.is_null())
                            .then(|| CStr::from_ptr(optarg).to_string_lossy().into_owned());
                        items.push(Ok((c as u8 as char, arg)));
                    }
                    optarg = std::ptr::null_mut();
                }
                let rest = ptrs[optind as usize..ptrs.len() - 1]
                    .iter()
                    .map(|&p| CStr::from_ptr(p).to_string_lossy().into_owned())
                    .collect();
                (items, rest)
            }
        }

        /// As [`getopt`], with a long option table; an error item carries `optopt` (0 for an
        /// unknown or ambiguous long option).
        #[allow(clippy::type_complexity)]
        pub fn getopt_long(
            argv: &[String],
            optstring: &str,
            longopts: &[super::LongOpt],
        ) -> (Vec<Result<(char, Option<String>), u32>>, Vec<String>) {
            let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let owned: Vec<CString> = argv
                .iter()
                .map(|a| CString::new(a.as_str()).unwrap())
                .collect();
            let mut ptrs: Vec<*mut c_char> =
                owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
            ptrs.push(std::ptr::null_mut());
            let names: Vec<CString> = longopts
                .iter()
                .map(|o| CString::new(o.name).unwrap())
                .collect();
            let mut table: Vec<libc::option> = longopts
                .iter()
                .zip(&names)
                .map(|(o, n)| libc::option {
                    name: n.as_ptr(),
                    has_arg: c_int::from(o.takes_arg),
                    flag: std::ptr::null_mut(),
                    val: o.val as c_int,
                })
                .collect();
            table.push(libc::option {
                name: std::ptr::null(),
                has_arg: 0,
                flag: std::ptr::null_mut(),
                val: 0,
            });
            let opts = CString::new(optstring).unwrap();
            let mut items = Vec::new();
            // SAFETY: as for getopt; the option table and its names outlive the calls.
            unsafe {
                optind = 0;
                opterr = 0;
                loop {
                    let c = libc::getopt_long(
                        ptrs.len() as c_int - 1,
                        ptrs.as_ptr(),
                        opts.as_ptr(),
                        table.as_ptr(),
                        std::ptr::null_mut(),
                    );
                    if c == -1 {
                        break;
                    }
                    if c == '?' as c_int {
                        items.push(Err(optopt as u32));
                    } else {
                        let arg = (!optarg.is_null())
                            .then(|| CStr::from_ptr(optarg).to_string_lossy().into_owned());
                        items.push(Ok((char::from_u32(c as u32).unwrap(), arg)));
                    }
                    optarg = std::ptr::null_mut();
                }
                let rest = ptrs[optind as usize..ptrs.len() - 1]
                    .iter()
                    .map(|&p| CStr::from_ptr(p).to_string_lossy().into_owned())
                    .collect();
                (items, rest)
            }
        }
    }

    /// A table shaped like qemu-io's: long-only options, prefixes shared by several names.
    const LONG: [LongOpt; 6] = [
        LongOpt {
            name: "help",
            takes_arg: false,
            val: 'h',
        },
        LongOpt {
            name: "cmd",
            takes_arg: true,
            val: 'c',
        },
        LongOpt {
            name: "copy-on-read",
            takes_arg: false,
            val: 'C',
        },
        LongOpt {
            name: "cache",
            takes_arg: true,
            val: 't',
        },
        LongOpt {
            name: "object",
            takes_arg: true,
            val: '\u{100}',
        },
        LongOpt {
            name: "image-opts",
            takes_arg: false,
            val: '\u{101}',
        },
    ];
    const LONG_SHORTS: &str = "hc:Ct:r";

    /// Every item and the positionals of `getopt_long` over `qemu-io ARGS`.
    fn run_long(args: &[&str]) -> (Vec<GetoptItem>, Vec<String>) {
        let argv: Vec<String> = std::iter::once("qemu-io")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        let mut g = Getopt::with_long(&argv, LONG_SHORTS, &LONG);
        let items: Vec<_> = g.by_ref().collect();
        (items, g.positionals().to_vec())
    }

    /// Messages as glibc 2.36's getopt_long prints them (checked against qemu-io 10.0.2).
    #[test]
    fn long_options_and_their_messages() {
        let (items, pos) = run_long(&["--cm", "x", "img", "--cache=none", "--im", "--obj", "o"]);
        assert_eq!(
            items,
            vec![
                opt('c', Some("x")),
                opt('t', Some("none")),
                opt('\u{101}', None),
                opt('\u{100}', Some("o")),
            ]
        );
        assert_eq!(pos, strings(&["img"]));
        let err = |args: &[&str]| run_long(args).0.into_iter().find_map(Result::err).unwrap();
        assert_eq!(
            err(&["--c"]),
            "qemu-io: option '--c' is ambiguous; possibilities: '--cmd' '--copy-on-read' '--cache'"
        );
        assert_eq!(
            err(&["--co=1"]),
            "qemu-io: option '--copy-on-read' doesn't allow an argument"
        );
        assert_eq!(
            err(&["--foo=bar"]),
            "qemu-io: unrecognized option '--foo=bar'"
        );
        assert_eq!(
            err(&["--ca"]),
            "qemu-io: option '--cache' requires an argument"
        );
        assert_eq!(err(&["-t"]), "qemu-io: option requires an argument -- 't'");
        assert_eq!(err(&["-rx"]), "qemu-io: invalid option -- 'x'");
        // An exact name wins over longer names it abbreviates; `--cmd=` is an empty argument.
        let (items, _) = run_long(&["--cmd=", "--help"]);
        assert_eq!(items, vec![opt('c', Some("")), opt('h', None)]);
    }

    proptest! {
        #[test]
        fn never_panics(argv in prop::collection::vec("\\PC{0,6}", 0..8), optstring in "[a-zA-Z:]{0,8}") {
            let mut g = Getopt::new(&argv, &optstring);
            let n = g.by_ref().take(100).count();
            prop_assert!(n < 100);
            prop_assert!(g.is_done());
        }

        /// Same options, arguments, error letters and positionals as glibc's getopt.
        #[test]
        fn agrees_with_glibc(args in prop::collection::vec(
            prop::sample::select(vec!["-", "--", "-q", "-v", "-qv", "-P", "-P5", "-Pq", "-x",
                "-1", "-vx", "-s", "-l3", "0", "1k", "-:", "--foo", "-vP", "x"]), 0..8)) {
            let mut argv = vec!["read".to_owned()];
            argv.extend(args.iter().map(|s| s.to_string()));
            let (want_items, want_rest) = glibc::getopt(&argv, READ_OPTS);
            let mut g = Getopt::new(&argv, READ_OPTS);
            let items: Vec<_> = g.by_ref().collect();
            prop_assert_eq!(items.len(), want_items.len());
            for (ours, theirs) in items.iter().zip(&want_items) {
                match (ours, theirs) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(msg), Err(c)) => {
                        // glibc reports both errors as '?'; the letter tells which one it was.
                        let want = if *c != ':' && READ_OPTS.contains(*c) {
                            format!("read: option requires an argument -- '{c}'")
                        } else {
                            format!("read: invalid option -- '{c}'")
                        };
                        prop_assert_eq!(msg, &want);
                    }
                    _ => prop_assert!(false, "{:?} vs {:?}", ours, theirs),
                }
            }
            prop_assert_eq!(g.positionals(), &want_rest[..]);
        }

        /// Same options, arguments, error kinds and positionals as glibc's getopt_long.
        #[test]
        fn long_agrees_with_glibc(args in prop::collection::vec(
            prop::sample::select(vec!["-", "--", "--c", "--cm", "--cmd", "--cmd=", "--cmd=x",
                "--ca", "--cache=none", "--co", "--co=1", "--help", "--help=1", "--h", "--foo",
                "--foo=bar", "--=x", "--obj", "--object=o", "--i", "--image-opts", "-rc", "-cx",
                "-C", "-t", "-x", "x", "-r-"]), 0..8)) {
            let mut argv = vec!["qemu-io".to_owned()];
            argv.extend(args.iter().map(|s| s.to_string()));
            let (want_items, want_rest) = glibc::getopt_long(&argv, LONG_SHORTS, &LONG);
            let mut g = Getopt::with_long(&argv, LONG_SHORTS, &LONG);
            let items: Vec<_> = g.by_ref().collect();
            prop_assert_eq!(items.len(), want_items.len());
            for (ours, theirs) in items.iter().zip(&want_items) {
                match (ours, theirs) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(msg), Err(0)) => prop_assert!(
                        msg.contains("unrecognized option") || msg.contains("is ambiguous"),
                        "{}", msg
                    ),
                    (Err(msg), Err(c)) => {
                        let c = char::from_u32(*c).unwrap();
                        let long = LONG.iter().find(|o| o.val == c);
                        let expected = [
                            format!("qemu-io: invalid option -- '{c}'"),
                            format!("qemu-io: option requires an argument -- '{c}'"),
                            format!("qemu-io: option '--{}' doesn't allow an argument",
                                long.map_or("", |o| o.name)),
                            format!("qemu-io: option '--{}' requires an argument",
                                long.map_or("", |o| o.name)),
                        ];
                        prop_assert!(expected.contains(msg), "{} for optopt {:?}", msg, c);
                    }
                    _ => prop_assert!(false, "{:?} vs {:?}", ours, theirs),
                }
            }
            prop_assert_eq!(g.positionals(), &want_rest[..]);
        }
    }
}
