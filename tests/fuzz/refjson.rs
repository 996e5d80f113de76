//! A reference JSON parser for the oracle, written apart from the rewriter: RFC 8259, depth ≤ 128
//! like the rewriter, and every node keeps its byte span so the oracle can check bytes, not only
//! values. Duplicate member names and member order are kept.
//!
//! Strict mode refuses lone UTF-16 surrogate escapes (`"\ud800"`), which name no character.
//! Lenient mode decodes each to U+FFFD and marks the string, so the oracle can tell where the
//! rewriter, which decodes only the strings it needs, must refuse one and where it passes it on.

/// Same limit as the rewriter (`json_rewrite::MAX_DEPTH`): 128 nested containers.
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, Clone)]
pub struct Node {
    pub start: usize,
    pub end: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Obj(Vec<Member>),
    Arr(Vec<Node>),
    Str(Text),
    /// A number; its text is the span.
    Num,
    /// `true`, `false` or `null`; its text is the span.
    Lit,
}

#[derive(Debug, Clone)]
pub struct Member {
    /// Where the member starts (its name's opening quote).
    pub start: usize,
    pub key: Text,
    pub value: Node,
}

/// A decoded string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    pub value: String,
    /// It held a lone surrogate escape (lenient mode only; decoded as U+FFFD).
    pub lone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub offset: usize,
    pub what: &'static str,
}

pub fn parse(bytes: &[u8], lenient: bool) -> Result<Node, Error> {
    let text = std::str::from_utf8(bytes).map_err(|e| Error { offset: e.valid_up_to(), what: "not UTF-8" })?;
    let mut p = Parser { b: text.as_bytes(), pos: 0, lenient };
    p.ws();
    let node = p.value(0)?;
    p.ws();
    if p.pos != p.b.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(node)
}

struct Parser<'a> {
    b: &'a [u8],
    pos: usize,
    lenient: bool,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> Error {
        Error { offset: self.pos, what }
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, Error> {
        let start = self.pos;
        let kind = match self.b.get(self.pos) {
            None => return Err(self.err("end of input")),
            Some(b'{') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("too deep"));
                }
                self.pos += 1;
                self.ws();
                let mut members = Vec::new();
                if self.b.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        let member_start = self.pos;
                        if self.b.get(self.pos) != Some(&b'"') {
                            return Err(self.err("expected a name"));
                        }
                        let key = self.string()?;
                        self.ws();
                        if self.b.get(self.pos) != Some(&b':') {
                            return Err(self.err("expected ':'"));
                        }
                        self.pos += 1;
                        self.ws();
                        let value = self.value(depth + 1)?;
                        members.push(Member { start: member_start, key, value });
                        self.ws();
                        match self.b.get(self.pos) {
                            Some(b',') => {
                                self.pos += 1;
                                self.ws();
                            }
                            Some(b'}') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or '}'")),
                        }
                    }
                }
                Kind::Obj(members)
            }
            Some(b'[') => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("too deep"));
                }
                self.pos += 1;
                self.ws();
                let mut items = Vec::new();
                if self.b.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                } else {
                    loop {
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        match self.b.get(self.pos) {
                            Some(b',') => {
                                self.pos += 1;
                                self.ws();
                            }
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return Err(self.err("expected ',' or ']'")),
                        }
                    }
                }
                Kind::Arr(items)
            }
            Some(b'"') => Kind::Str(self.string()?),
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Kind::Num
            }
            Some(_) => {
                let rest = &self.b[self.pos..];
                let word: &[u8] = if rest.starts_with(b"true") {
                    b"true"
                } else if rest.starts_with(b"false") {
                    b"false"
                } else if rest.starts_with(b"null") {
                    b"null"
                } else {
                    return Err(self.err("unexpected character"));
                };
                self.pos += word.len();
                Kind::Lit
            }
        };
        Ok(Node { start, end: self.pos, kind })
    }

    fn number(&mut self) -> Result<(), Error> {
        if self.b.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        match self.b.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("bad number")),
        }
        if self.b.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.err("bad fraction"));
            }
            self.digits();
        }
        if matches!(self.b.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.b.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
                return Err(self.err("bad exponent"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.b.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let mut v = 0;
        for _ in 0..4 {
            let d = self.b.get(self.pos).and_then(|&c| (c as char).to_digit(16)).ok_or_else(|| self.err("bad \\u escape"))?;
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    fn lone(&mut self, out: &mut String, lone: &mut bool) -> Result<(), Error> {
        if !self.lenient {
            return Err(self.err("lone surrogate"));
        }
        out.push('\u{FFFD}');
        *lone = true;
        Ok(())
    }

    /// A string from its opening quote; the input is known to be UTF-8.
    fn string(&mut self) -> Result<Text, Error> {
        self.pos += 1;
        let mut out = String::new();
        let mut lone = false;
        loop {
            let run_start = self.pos;
            while let Some(&c) = self.b.get(self.pos) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // Safe: the input is UTF-8 and the run stops only at ASCII bytes.
            out.push_str(std::str::from_utf8(&self.b[run_start..self.pos]).map_err(|_| self.err("not UTF-8"))?);
            match self.b.get(self.pos) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Text { value: out, lone });
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let e = *self.b.get(self.pos).ok_or_else(|| self.err("bad escape"))?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            if (0xD800..0xDC00).contains(&hi) {
                                let save = self.pos;
                                let paired = if self.b.get(self.pos..self.pos + 2) == Some(b"\\u") {
                                    self.pos += 2;
                                    match self.hex4() {
                                        Ok(lo) if (0xDC00..0xE000).contains(&lo) => Some(lo),
                                        _ => None,
                                    }
                                } else {
                                    None
                                };
                                match paired {
                                    Some(lo) => out.push(char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)).expect("valid pair")),
                                    None => {
                                        // The next escape (if any) is read on its own.
                                        self.pos = save;
                                        self.lone(&mut out, &mut lone)?;
                                    }
                                }
                            } else if (0xDC00..0xE000).contains(&hi) {
                                self.lone(&mut out, &mut lone)?;
                            } else {
                                out.push(char::from_u32(hi).expect("not a surrogate"));
                            }
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }
}

impl Node {
    /// The node's bytes in the document it was parsed from.
    pub fn raw<'a>(&self, doc: &'a [u8]) -> &'a [u8] {
        &doc[self.start..self.end]
    }
}
