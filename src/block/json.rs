//! QEMU's JSON dialect, as `qobject_from_json` reads the text after `json:` in a filename: a
//! lexer, the message streamer that cuts the token stream into values, and the parser, giving a
//! value tree with keys in input order and QEMU 10.0.2's error texts.
//!
//! What differs from RFC 8259 (and from serde_json):
//! - strings may also be single-quoted, and `\'` is an escape in both kinds;
//! - an integer is kept as `i64`, else (non-negative) as `u64`, else as a double; a number with a
//!   fraction or exponent is a double (`1e400` is infinity, not an error);
//! - a duplicate key in an object is an error;
//! - nesting deeper than 1024 brackets and braces together is an error;
//! - after the value, anything but whitespace (space, tab, CR, LF) is "Expecting at most one
//!   JSON value"; nothing at all is "Expecting a JSON value";
//! - `%` (QEMU's interpolation, off for filenames) is a stray character.
//!
//! The first error wins, which is why lexing stops at the first stray character: QEMU keeps
//! going but reports only the first problem.

/// A parsed value (QEMU's QObject). Dict keys are distinct and in input order.
#[derive(Debug, Clone, PartialEq)]
pub enum QObject {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    /// Modified UTF-8 in QEMU; `\u0000` (which QEMU stores as the bytes C0 80) is a NUL here.
    Str(String),
    List(Vec<QObject>),
    Dict(Vec<(String, QObject)>),
}

/// Parses one JSON value as `qobject_from_json` does. The error is QEMU's message.
pub fn parse(input: &[u8]) -> Result<QObject, String> {
    // QEMU reads the text as a C string.
    let input = input.split(|&b| b == 0).next().unwrap_or_default();
    let mut lexer = Lexer { input, pos: 0 };
    let mut streamer = Streamer::default();
    let first = loop {
        match lexer.next() {
            None => break streamer.end_of_input(input),
            Some(Lexed::Stray(text)) => {
                break Some(Err(format!(
                    "JSON parse error, stray '{}'",
                    String::from_utf8_lossy(text)
                )));
            }
            Some(Lexed::Token(token)) => {
                if let Some(done) = streamer.push(token, input) {
                    break Some(done);
                }
            }
        }
    };
    match first {
        None => Err("Expecting a JSON value".to_string()),
        Some(Err(e)) => Err(e),
        // Anything after the value starts a second one (or a stray character).
        Some(Ok(_)) if lexer.next().is_some() => {
            Err("Expecting at most one JSON value".to_string())
        }
        Some(Ok(value)) => Ok(value),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    String,
    /// A single token longer than the lexer's limit.
    Oversized,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    fn text<'a>(&self, input: &'a [u8]) -> &'a [u8] {
        &input[self.start..self.end]
    }
}

enum Lexed<'a> {
    Token(Token),
    /// What QEMU calls a stray token: the text up to and including the offending byte.
    Stray(&'a [u8]),
}

/// QEMU's limits: on one token, on all tokens of a value together, on their number, and on
/// nesting.
const MAX_TOKEN_SIZE: usize = 64 << 20;
const MAX_TOKEN_COUNT: usize = 2 << 20;
const MAX_NESTING: i64 = 1 << 10;

/// The lexer's states between bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// in a string quoted with the given byte
    Str(u8),
    /// right after a backslash in a string
    Escape(u8),
    /// `-`
    Sign,
    /// `0` or `-0`
    Zero,
    /// a non-zero integer part
    Digits,
    /// `.` with no digit after it yet
    Point,
    Fraction,
    /// `e` or `E`
    ExpMark,
    ExpSign,
    Exponent,
    Keyword,
}

/// What a byte does in a state.
enum Step {
    /// the byte is part of the token
    Stay(State),
    /// the byte ends the token and belongs to it
    Close(Kind),
    /// the token ended before this byte, which starts the next one
    EndBefore(Kind),
    /// the byte cannot continue the token
    Stray,
}

fn step(state: State, b: u8) -> Step {
    use State::*;
    match state {
        Str(q) if b == q => Step::Close(Kind::String),
        Str(q) if b == b'\\' => Step::Stay(Escape(q)),
        // Control characters, and bytes that never occur in UTF-8, end a string with an error.
        Str(q) | Escape(q) if (0x20..=0xFD).contains(&b) => Step::Stay(Str(q)),
        Str(_) | Escape(_) => Step::Stray,
        Sign if b == b'0' => Step::Stay(Zero),
        Sign if b.is_ascii_digit() => Step::Stay(Digits),
        Sign => Step::Stray,
        Zero if b.is_ascii_digit() => Step::Stray,
        Zero if b == b'.' => Step::Stay(Point),
        Zero => Step::EndBefore(Kind::Integer),
        Digits if b.is_ascii_digit() => Step::Stay(Digits),
        Digits if b == b'.' => Step::Stay(Point),
        Digits if b == b'e' || b == b'E' => Step::Stay(ExpMark),
        Digits => Step::EndBefore(Kind::Integer),
        Point if b.is_ascii_digit() => Step::Stay(Fraction),
        Point => Step::Stray,
        Fraction if b.is_ascii_digit() => Step::Stay(Fraction),
        Fraction if b == b'e' || b == b'E' => Step::Stay(ExpMark),
        Fraction => Step::EndBefore(Kind::Float),
        ExpMark if b == b'+' || b == b'-' => Step::Stay(ExpSign),
        ExpMark | ExpSign if b.is_ascii_digit() => Step::Stay(Exponent),
        ExpMark | ExpSign => Step::Stray,
        Exponent if b.is_ascii_digit() => Step::Stay(Exponent),
        Exponent => Step::EndBefore(Kind::Float),
        Keyword if b.is_ascii_lowercase() => Step::Stay(Keyword),
        Keyword => Step::EndBefore(Kind::Keyword),
    }
}

/// The token a state stands for when the input ends in it, if it is a complete one.
fn complete_at_end(state: State) -> Option<Kind> {
    match state {
        State::Zero | State::Digits => Some(Kind::Integer),
        State::Fraction | State::Exponent => Some(Kind::Float),
        State::Keyword => Some(Kind::Keyword),
        _ => None,
    }
}

struct Lexer<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// The next token, or None at the end of the input.
    fn next(&mut self) -> Option<Lexed<'a>> {
        let input = self.input;
        let start = loop {
            let &b = input.get(self.pos)?;
            if !matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
                break self.pos;
            }
            self.pos += 1;
        };
        let b = input[start];
        self.pos += 1;
        let single = |kind| {
            Some(Lexed::Token(Token {
                kind,
                start,
                end: start + 1,
            }))
        };
        let mut state = match b {
            b'{' => return single(Kind::LCurly),
            b'}' => return single(Kind::RCurly),
            b'[' => return single(Kind::LSquare),
            b']' => return single(Kind::RSquare),
            b':' => return single(Kind::Colon),
            b',' => return single(Kind::Comma),
            b'"' | b'\'' => State::Str(b),
            b'0' => State::Zero,
            b'1'..=b'9' => State::Digits,
            b'-' => State::Sign,
            b'a'..=b'z' => State::Keyword,
            _ => return Some(Lexed::Stray(&input[start..self.pos])),
        };
        loop {
            if self.pos - start > MAX_TOKEN_SIZE {
                return Some(Lexed::Token(Token {
                    kind: Kind::Oversized,
                    start,
                    end: self.pos,
                }));
            }
            let Some(&b) = input.get(self.pos) else {
                return Some(match complete_at_end(state) {
                    Some(kind) => Lexed::Token(Token {
                        kind,
                        start,
                        end: self.pos,
                    }),
                    None => Lexed::Stray(&input[start..]),
                });
            };
            match step(state, b) {
                Step::Stay(next) => {
                    state = next;
                    self.pos += 1;
                }
                Step::Close(kind) => {
                    self.pos += 1;
                    return Some(Lexed::Token(Token {
                        kind,
                        start,
                        end: self.pos,
                    }));
                }
                Step::EndBefore(kind) => {
                    return Some(Lexed::Token(Token {
                        kind,
                        start,
                        end: self.pos,
                    }));
                }
                Step::Stray => {
                    self.pos += 1;
                    return Some(Lexed::Stray(&input[start..self.pos]));
                }
            }
        }
    }
}

/// QEMU's JSON message parser: collects tokens until brackets and braces balance, then parses
/// them as one value.
#[derive(Default)]
struct Streamer {
    tokens: Vec<Token>,
    braces: i64,
    brackets: i64,
    size: usize,
}

impl Streamer {
    /// Takes a token; returns the value (or error) once one is complete.
    fn push(&mut self, token: Token, input: &[u8]) -> Option<Result<QObject, String>> {
        match token.kind {
            Kind::LCurly => self.braces += 1,
            Kind::RCurly => self.braces -= 1,
            Kind::LSquare => self.brackets += 1,
            Kind::RSquare => self.brackets -= 1,
            _ => {}
        }
        let len = token.end - token.start;
        if self.size + len + 1 > MAX_TOKEN_SIZE {
            return Some(Err("JSON token size limit exceeded".to_string()));
        }
        if self.tokens.len() + 1 > MAX_TOKEN_COUNT {
            return Some(Err("JSON token count limit exceeded".to_string()));
        }
        if self.brackets + self.braces > MAX_NESTING {
            return Some(Err("JSON nesting depth limit exceeded".to_string()));
        }
        self.size += len;
        self.tokens.push(token);
        // QEMU tests the bracket count twice and the brace count not at all here, so a stray
        // closing brace inside an open bracket does not end the value.
        if (self.braces > 0 || self.brackets > 0) && self.brackets >= 0 {
            return None;
        }
        Some(Parser::run(&self.tokens, input))
    }

    /// The end of the input: a value still open is parsed as it stands.
    fn end_of_input(&self, input: &[u8]) -> Option<Result<QObject, String>> {
        (!self.tokens.is_empty()).then(|| Parser::run(&self.tokens, input))
    }
}

/// QEMU's recursive-descent parser over one value's tokens, with the recursion kept in an
/// explicit stack so that nesting as deep as the streamer allows costs no call stack. Errors come
/// out in the same order as QEMU's: the first one met wins.
struct Parser<'a> {
    tokens: &'a [Token],
    next: usize,
    input: &'a [u8],
}

/// An open container waiting for its next value.
enum Frame {
    /// a list; the value is its next element
    List(Vec<QObject>),
    /// an object; the value is its next key
    Key(Vec<(String, QObject)>),
    /// an object; the value belongs to this key
    Value(Vec<(String, QObject)>, String),
}

/// How a value starts: complete (a scalar or an empty container), or an open container.
enum Start {
    Complete(QObject),
    Open(Frame),
}

type Parsed<T> = Result<T, String>;

fn syntax(message: impl std::fmt::Display) -> String {
    format!("JSON parse error, {message}")
}

fn premature_eoi() -> String {
    syntax("premature EOI")
}

impl<'a> Parser<'a> {
    fn run(tokens: &'a [Token], input: &'a [u8]) -> Parsed<QObject> {
        Parser {
            tokens,
            next: 0,
            input,
        }
        .value()
    }

    fn peek(&self) -> Option<Token> {
        self.tokens.get(self.next).copied()
    }

    fn pop(&mut self) -> Option<Token> {
        let t = self.peek();
        self.next += 1;
        t
    }

    fn value(&mut self) -> Parsed<QObject> {
        let mut open: Vec<Frame> = Vec::new();
        'value: loop {
            let mut done = match self.start()? {
                Start::Complete(v) => v,
                Start::Open(frame) => {
                    open.push(frame);
                    continue;
                }
            };
            // Give the finished value to its container; close containers as their tokens say.
            loop {
                let Some(frame) = open.pop() else {
                    return Ok(done);
                };
                match frame {
                    Frame::List(mut items) => {
                        items.push(done);
                        match self.pop().ok_or_else(premature_eoi)?.kind {
                            Kind::RSquare => done = QObject::List(items),
                            Kind::Comma => {
                                open.push(Frame::List(items));
                                continue 'value;
                            }
                            _ => return Err(syntax("expected separator in list")),
                        }
                    }
                    Frame::Key(entries) => {
                        let QObject::Str(key) = done else {
                            return Err(syntax("key is not a string in object"));
                        };
                        if self.pop().ok_or_else(premature_eoi)?.kind != Kind::Colon {
                            return Err(syntax("missing : in object pair"));
                        }
                        open.push(Frame::Value(entries, key));
                        continue 'value;
                    }
                    Frame::Value(mut entries, key) => {
                        // Checked only once the value has parsed, as QEMU does.
                        if entries.iter().any(|(k, _)| *k == key) {
                            return Err(syntax("duplicate key"));
                        }
                        entries.push((key, done));
                        match self.pop().ok_or_else(premature_eoi)?.kind {
                            Kind::RCurly => done = QObject::Dict(entries),
                            Kind::Comma => {
                                open.push(Frame::Key(entries));
                                continue 'value;
                            }
                            _ => return Err(syntax("expected separator in dict")),
                        }
                    }
                }
            }
        }
    }

    fn start(&mut self) -> Parsed<Start> {
        let token = self.peek().ok_or_else(premature_eoi)?;
        self.next += 1;
        let complete = match token.kind {
            Kind::LCurly | Kind::LSquare => {
                let (close, empty, frame) = if token.kind == Kind::LCurly {
                    (
                        Kind::RCurly,
                        QObject::Dict(Vec::new()),
                        Frame::Key(Vec::new()),
                    )
                } else {
                    (
                        Kind::RSquare,
                        QObject::List(Vec::new()),
                        Frame::List(Vec::new()),
                    )
                };
                if self.peek().ok_or_else(premature_eoi)?.kind != close {
                    return Ok(Start::Open(frame));
                }
                self.next += 1;
                empty
            }
            Kind::Integer | Kind::Float | Kind::String => self.literal(token)?,
            Kind::Keyword => match token.text(self.input) {
                b"true" => QObject::Bool(true),
                b"false" => QObject::Bool(false),
                b"null" => QObject::Null,
                other => {
                    return Err(syntax(format_args!(
                        "invalid keyword '{}'",
                        String::from_utf8_lossy(other)
                    )));
                }
            },
            _ => return Err(syntax("expecting value")),
        };
        Ok(Start::Complete(complete))
    }

    fn literal(&self, token: Token) -> Parsed<QObject> {
        let text = token.text(self.input);
        match token.kind {
            Kind::String => parse_string(text).map(QObject::Str),
            // The lexer only lets ASCII digits, signs, points and exponents through.
            _ => {
                let text = std::str::from_utf8(text).unwrap_or_default();
                Ok(number(text, token.kind == Kind::Integer))
            }
        }
    }
}

/// An integer is `i64` if it fits, else `u64` if it is non-negative and fits, else a double (as
/// is any number with a fraction or exponent, parsed as strtod does).
fn number(text: &str, integer: bool) -> QObject {
    if integer {
        if let Ok(i) = text.parse::<i64>() {
            return QObject::Int(i);
        }
        if let Ok(u) = text.parse::<u64>() {
            return QObject::UInt(u);
        }
    }
    QObject::Double(text.parse().unwrap_or(f64::NAN))
}

/// A string token's value: quotes stripped, escapes decoded, UTF-8 checked.
fn parse_string(token: &[u8]) -> Parsed<String> {
    let quote = token[0];
    let mut out = String::new();
    let mut i = 1;
    while token.get(i).is_some_and(|&b| b != quote) {
        if token[i] != b'\\' {
            let (cp, len) = mod_utf8_codepoint(&token[i..]);
            let c = cp
                .and_then(char::from_u32)
                .ok_or_else(|| syntax("invalid UTF-8 sequence in string"))?;
            out.push(c);
            i += len;
            continue;
        }
        let escape_start = i;
        i += 2;
        let simple = match token.get(escape_start + 1) {
            Some(b'"') => '"',
            Some(b'\'') => '\'',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let (cp, len) = unicode_escape(&token[i..]);
                i += len;
                match cp.and_then(char::from_u32) {
                    Some(c) => {
                        out.push(c);
                        continue;
                    }
                    None => {
                        // QEMU quotes the escape as far as it read it, which can include the
                        // closing quote (`\u12"`), but not past the token.
                        let quoted = &token[escape_start..(i).min(token.len())];
                        return Err(syntax(format_args!(
                            "{} is not a valid Unicode character",
                            String::from_utf8_lossy(quoted)
                        )));
                    }
                }
            }
            _ => return Err(syntax("invalid escape sequence in string")),
        };
        out.push(simple);
    }
    Ok(out)
}

/// The code point of a `\u` escape (`text` starts after the `u`) and the bytes QEMU steps over:
/// four for one escape (even when they are not all hex digits), ten for a surrogate pair.
fn unicode_escape(text: &[u8]) -> (Option<u32>, usize) {
    let Some(cp) = hex4(text) else {
        return (None, 4);
    };
    if (0xD800..=0xDBFF).contains(&cp) && text.get(4..6) == Some(b"\\u") {
        return match text.get(6..).and_then(hex4) {
            Some(low @ 0xDC00..=0xDFFF) => {
                let cp = 0x10000 + ((cp & 0x3FF) << 10) + (low & 0x3FF);
                (is_valid_codepoint(cp).then_some(cp), 10)
            }
            _ => (None, 4),
        };
    }
    (is_valid_codepoint(cp).then_some(cp), 4)
}

fn hex4(text: &[u8]) -> Option<u32> {
    let digits = text.get(..4)?;
    digits
        .iter()
        .try_fold(0u32, |cp, &b| Some(cp << 4 | char::from(b).to_digit(16)?))
}

/// Unicode scalar values other than the 66 noncharacters.
fn is_valid_codepoint(cp: u32) -> bool {
    cp <= 0x10FFFF
        && !(0xD800..=0xDFFF).contains(&cp)
        && !(0xFDD0..=0xFDEF).contains(&cp)
        && cp & 0xFFFE != 0xFFFE
}

/// QEMU's `mod_utf8_codepoint`: the code point of the sequence at the start of `s` (None if it
/// is invalid: malformed, overlong other than C0 80, a surrogate or a noncharacter) and its
/// length.
pub(crate) fn mod_utf8_codepoint(s: &[u8]) -> (Option<u32>, usize) {
    const MIN_CP: [u32; 5] = [0x80, 0x800, 0x10000, 0x200000, 0x4000000];
    let Some(&lead) = s.first() else {
        return (None, 0);
    };
    if lead < 0x80 {
        return (Some(u32::from(lead)), 1);
    }
    if lead >= 0xFE || lead & 0x40 == 0 {
        return (None, 1);
    }
    let len = lead.leading_ones() as usize;
    let mut cp = u32::from(lead) & ((0x80 >> len) - 1);
    for i in 1..len {
        match s.get(i) {
            Some(&b) if b & 0xC0 == 0x80 => cp = cp << 6 | u32::from(b & 0x3F),
            _ => return (None, i),
        }
    }
    let overlong = cp < MIN_CP[len - 2] && !(cp == 0 && len == 2);
    let valid = is_valid_codepoint(cp) && !overlong;
    (valid.then_some(cp), len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use QObject::*;

    fn ok(text: &str) -> QObject {
        parse(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        parse(text.as_bytes()).expect_err(text)
    }

    fn s(text: &str) -> QObject {
        Str(text.to_string())
    }

    #[test]
    fn objects_keep_key_order_and_both_quote_styles() {
        assert_eq!(
            ok("{'b': \"x\", \"a\": ['y', {}], 'c': null}"),
            Dict(vec![
                ("b".into(), s("x")),
                ("a".into(), List(vec![s("y"), Dict(vec![])])),
                ("c".into(), Null),
            ])
        );
        assert_eq!(
            ok(" \t\r\n{\n'a'\n:\ntrue\n}\n "),
            Dict(vec![("a".into(), Bool(true))])
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(ok(r#""\"\'\\\/\b\f\n\r\t""#), s("\"'\\/\u{8}\u{c}\n\r\t"));
        assert_eq!(ok(r"'it\'s'"), s("it's"));
        assert_eq!(ok(r#"'say "hi"'"#), s("say \"hi\""));
        assert_eq!(ok(r#""\u00e9\u002E\uD83D\uDE00""#), s("é.😀"));
        assert_eq!(ok(r#""\u0000""#), s("\0"));
        assert_eq!(ok("\"100%\""), s("100%"));
        assert_eq!(
            err(r#""\x""#),
            "JSON parse error, invalid escape sequence in string"
        );
        assert_eq!(
            err(r#""\u12""#),
            "JSON parse error, \\u12\" is not a valid Unicode character"
        );
        assert_eq!(err(r#""\u12"#), "JSON parse error, stray '\"\\u12'");
        assert_eq!(
            err(r#""\uD800""#),
            "JSON parse error, \\uD800 is not a valid Unicode character"
        );
        assert_eq!(
            err(r#""\uD800\u0041""#),
            "JSON parse error, \\uD800 is not a valid Unicode character"
        );
        assert_eq!(
            err(r#""\uDC00""#),
            "JSON parse error, \\uDC00 is not a valid Unicode character"
        );
        assert_eq!(
            err(r#""\uFFFE""#),
            "JSON parse error, \\uFFFE is not a valid Unicode character"
        );
        assert_eq!(
            err(r#""\uD83F\uDFFF""#),
            "JSON parse error, \\uD83F\\uDFFF is not a valid Unicode character"
        );
    }

    #[test]
    fn raw_utf8_is_checked() {
        assert_eq!(ok("\"é😀\""), s("é😀"));
        assert_eq!(
            err("\"\u{FDD0}\""),
            "JSON parse error, invalid UTF-8 sequence in string"
        );
        assert_eq!(
            err("\"\u{10FFFF}\""),
            "JSON parse error, invalid UTF-8 sequence in string"
        );
        // Bytes that are not UTF-8 at all.
        assert_eq!(
            parse(b"\"\xC3\"").unwrap_err(),
            "JSON parse error, invalid UTF-8 sequence in string"
        );
        assert_eq!(parse(b"\"\xC0\x80\"").unwrap(), s("\0"));
        assert_eq!(
            parse(b"\"\xE0\x80\x80\"").unwrap_err(),
            "JSON parse error, invalid UTF-8 sequence in string"
        );
        assert_eq!(
            parse(b"\"\xFE\"").unwrap_err(),
            "JSON parse error, stray '\"\u{FFFD}'"
        );
        assert_eq!(err("\"a\tb\""), "JSON parse error, stray '\"a\t'");
        assert_eq!(err("\"a\nb\""), "JSON parse error, stray '\"a\n'");
    }

    #[test]
    fn numbers() {
        assert_eq!(ok("0"), Int(0));
        assert_eq!(ok("-0"), Int(0));
        assert_eq!(ok("-9223372036854775808"), Int(i64::MIN));
        assert_eq!(ok("9223372036854775808"), UInt(1 << 63));
        assert_eq!(ok("18446744073709551615"), UInt(u64::MAX));
        assert_eq!(ok("18446744073709551616"), Double(18446744073709551616.0));
        assert_eq!(ok("-9223372036854775809"), Double(-9223372036854775808.0));
        assert_eq!(ok("512.0"), Double(512.0));
        assert_eq!(ok("-0.0"), Double(-0.0));
        assert_eq!(ok("5.12E+2"), Double(512.0));
        assert_eq!(ok("1e400"), Double(f64::INFINITY));
        assert_eq!(ok("1e-400"), Double(0.0));
        assert_eq!(err("01"), "JSON parse error, stray '01'");
        assert_eq!(err("-"), "JSON parse error, stray '-'");
        assert_eq!(err("-}"), "JSON parse error, stray '-}'");
        assert_eq!(err("1."), "JSON parse error, stray '1.'");
        assert_eq!(err("[1.]"), "JSON parse error, stray '1.]'");
        assert_eq!(err("1e"), "JSON parse error, stray '1e'");
        assert_eq!(err("1e+"), "JSON parse error, stray '1e+'");
        assert_eq!(err("+1"), "JSON parse error, stray '+'");
        assert_eq!(err(".5"), "JSON parse error, stray '.'");
        // `0` takes no exponent: the `e` starts a keyword.
        assert_eq!(err("[0e5]"), "JSON parse error, expected separator in list");
        assert_eq!(err("1x"), "Expecting at most one JSON value");
    }

    #[test]
    fn keywords() {
        assert_eq!(
            ok("[true,false,null]"),
            List(vec![Bool(true), Bool(false), Null])
        );
        assert_eq!(err("{'a':tru}"), "JSON parse error, invalid keyword 'tru'");
        assert_eq!(err("{'a':True}"), "JSON parse error, stray 'T'");
        assert_eq!(err("nan"), "JSON parse error, invalid keyword 'nan'");
        assert_eq!(err("%d"), "JSON parse error, stray '%'");
    }

    #[test]
    fn structure_errors() {
        for (text, e) in [
            ("", "Expecting a JSON value"),
            (" \n\t\r", "Expecting a JSON value"),
            ("{", "JSON parse error, premature EOI"),
            ("{'a'", "JSON parse error, premature EOI"),
            ("{'a':", "JSON parse error, premature EOI"),
            ("{'a':1", "JSON parse error, premature EOI"),
            ("{'a':1,", "JSON parse error, premature EOI"),
            ("[", "JSON parse error, premature EOI"),
            ("[1", "JSON parse error, premature EOI"),
            ("[1,", "JSON parse error, premature EOI"),
            ("{'a':\"abc", "JSON parse error, stray '\"abc'"),
            ("{'a':1}x", "Expecting at most one JSON value"),
            ("{'a':1} {", "Expecting at most one JSON value"),
            ("{'a':1}}", "Expecting at most one JSON value"),
            ("{} @", "Expecting at most one JSON value"),
            ("{'a' 1}", "JSON parse error, missing : in object pair"),
            ("{1:1}", "JSON parse error, key is not a string in object"),
            (
                "{null:1}",
                "JSON parse error, key is not a string in object",
            ),
            (
                "{'a':1 'b':2}",
                "JSON parse error, expected separator in dict",
            ),
            ("[1 2]", "JSON parse error, expected separator in list"),
            ("{'a':1,'a':2}", "JSON parse error, duplicate key"),
            ("{'a':1,'a':tru}", "JSON parse error, invalid keyword 'tru'"),
            ("{,}", "JSON parse error, expecting value"),
            ("{'a':}", "JSON parse error, expecting value"),
            ("[1,]", "JSON parse error, expecting value"),
            ("[,]", "JSON parse error, expecting value"),
            ("}", "JSON parse error, expecting value"),
            ("]", "JSON parse error, expecting value"),
            (":", "JSON parse error, expecting value"),
            ("{]", "JSON parse error, expecting value"),
            ("[}]", "JSON parse error, expecting value"),
            ("@", "JSON parse error, stray '@'"),
            ("{'a': 1, @", "JSON parse error, stray '@'"),
        ] {
            assert_eq!(err(text), e, "{text:?}");
        }
    }

    #[test]
    fn a_closing_brace_inside_an_open_list_does_not_end_it() {
        // `[}` leaves the bracket open, so the tokens up to the end are parsed together.
        assert_eq!(err("[} 1"), "JSON parse error, expecting value");
        assert_eq!(err("[}"), "JSON parse error, expecting value");
    }

    #[test]
    fn nesting_limit() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(ok(&deep(1024)), {
            let mut v = List(vec![]);
            for _ in 1..1024 {
                v = List(vec![v]);
            }
            v
        });
        assert_eq!(err(&deep(1025)), "JSON nesting depth limit exceeded");
        let mixed = format!("{}{}", "{'a':[".repeat(512), "]}".repeat(512));
        assert!(parse(mixed.as_bytes()).is_ok());
        let mixed = format!("{}[{}", "{'a':[".repeat(512), "]}".repeat(512));
        assert_eq!(err(&mixed), "JSON nesting depth limit exceeded");
    }

    #[test]
    fn size_limits() {
        // The tokens of one value may total just under 64 MiB (QEMU counts one byte more per
        // token).
        let half = "x".repeat(MAX_TOKEN_SIZE / 2 - 3);
        assert_eq!(
            err(&format!("['{half}','{half}']")),
            "JSON token size limit exceeded"
        );
        // `[`, then `0,` pairs, then `0]`: 2 Mi tokens parse, one more is too many.
        let list = |pairs: usize| format!("[{}0]", "0,".repeat(pairs));
        let most = MAX_TOKEN_COUNT / 2 - 2;
        assert!(matches!(ok(&list(most)), List(items) if items.len() == most + 1));
        assert_eq!(err(&list(most + 1)), "JSON token count limit exceeded");
    }

    #[test]
    fn the_text_ends_at_a_nul() {
        assert_eq!(parse(b"{}\0garbage"), Ok(Dict(vec![])));
        assert_eq!(parse(b"\0{}").unwrap_err(), "Expecting a JSON value");
    }

    #[test]
    fn top_level_scalars_parse() {
        assert_eq!(ok("'x'"), s("x"));
        assert_eq!(ok(" 7 "), Int(7));
        assert_eq!(ok("[]"), List(vec![]));
    }
}
