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
//! * `--foo` is not a long option here: it is the cluster `-`, `f`, `o`, `o`.
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
    }
}
