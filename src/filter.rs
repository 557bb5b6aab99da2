//! Consul's `?filter=` expression language (HashiCorp go-bexpr) over the JSON answers cairn's
//! HTTP endpoints already produce, e.g. `Service.Tags contains "primary"` or
//! `Meta.env == prod and Address matches "^10\\."`.
//!
//! It owns the grammar (parse, with positions in its errors and bounds on size and nesting) and
//! the evaluation against one [`serde_json::Value`], following go-bexpr v0.1.2, the version
//! Consul builds with:
//!
//! - `A and B`, `A or B`, `not A`, `( A )`; `not` binds tighter than `and`, `and` than `or`;
//!   keywords are lowercase and case-sensitive; `and`/`or` short-circuit as in go-bexpr.
//! - `Sel == V`, `Sel != V`, `Sel is empty`, `Sel is not empty`, `V in Sel`, `V not in Sel`,
//!   `Sel contains V`, `Sel not contains V`, `Sel matches V`, `Sel not matches V`.
//! - A selector is `Ident(.Ident | ["key"])*` with `Ident = [a-zA-Z][a-zA-Z0-9_]*`; a value is a
//!   double-quoted string (Go escapes), a backtick raw string, a number or a bare word. A value
//!   stays text until it meets the selected JSON value, which decides how it is read (as
//!   go-bexpr coerces by the Go field's type).
//! - A selector that goes on through a list applies to every element and holds if it holds for
//!   any (go-bexpr v0.1.2's implicit "any"): `Checks.Status == passing` is true when one check
//!   passes, and `Checks.Status != passing` when one does not (Consul documents this: the
//!   `passing` query parameter needs all checks, `Checks.Status` one).
//!
//! What it deliberately does not do: it does not know each endpoint's Go types, so a selector is
//! validated against the answer's own fields while evaluating, not up front. A field absent from
//! an object is a typo ([`FilterError::UnknownSelector`]) unless that object is one of Consul's
//! string maps (`Meta`, `NodeMeta`, `ServiceMeta`, `TaggedAddresses`,
//! `ServiceTaggedAddresses`), where a missing key is an ordinary answer (`==` false,
//! `!=` true, `is empty` true, ...). A consequence: a typo in a filter over an empty answer, or
//! in a branch that short-circuiting never reaches, goes unreported, where Consul would refuse it.

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Number, Value};

/// Longest expression accepted, in bytes; bounds the parse work a request can ask for.
const MAX_EXPRESSION_BYTES: usize = 4096;
/// Deepest nesting of `(` and `not` accepted. Parsing and evaluation recurse only through these
/// (plus one flattened `and`/`or` level each), so this bounds their stack use.
const MAX_DEPTH: usize = 32;
/// Cap on a compiled `matches` regular expression, well under the regex crate's 10 MiB default,
/// so one filter cannot make the server build a huge automaton.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// Fields that are string-keyed maps in Consul's Go types (`map[string]string` and the tagged
/// address maps). Under these a missing key means "no such entry", not "no such field"; a
/// missing or `null` map itself is Go's nil map, which behaves as empty.
const MAP_FIELDS: [&str; 5] = ["Meta", "NodeMeta", "ServiceMeta", "TaggedAddresses", "ServiceTaggedAddresses"];

/// A parsed filter expression, ready to evaluate against many elements.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Node,
}

/// Why an expression was refused (the first four, at parse) or could not be evaluated (the rest).
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("the expression is {length} bytes long; at most {max} are allowed", max = MAX_EXPRESSION_BYTES)]
    TooLong { length: usize },
    #[error("at offset {offset}: the expression nests '(' and 'not' deeper than {max} levels", max = MAX_DEPTH)]
    TooDeep { offset: usize },
    #[error("at offset {offset}: {message}")]
    Syntax { offset: usize, message: String },
    #[error("at offset {offset}: invalid regular expression {pattern:?}: {message}")]
    Regex { offset: usize, pattern: String, message: String },
    /// A selector names a field the element does not have (Consul's wording).
    #[error("Selector \"{0}\" is not valid")]
    UnknownSelector(String),
    /// The operator does not apply to the kind of value the selector found.
    #[error("cannot use '{operator}' on selector \"{selector}\": it selects {found}")]
    UnsupportedOperator { operator: &'static str, selector: String, found: &'static str },
    /// The value cannot be read as the selected field's type (`Port == abc`).
    #[error("Failed to coerce value \"{value}\" for selector \"{selector}\": not a {expected}")]
    BadValue { value: String, selector: String, expected: &'static str },
}

impl Filter {
    /// Parses an expression; errors on bad syntax, a bad regular expression, or an expression
    /// over the size and nesting bounds.
    pub fn parse(expression: &str) -> Result<Filter, FilterError> {
        if expression.len() > MAX_EXPRESSION_BYTES {
            return Err(FilterError::TooLong { length: expression.len() });
        }
        let tokens = Lexer::new(expression).tokenize()?;
        let mut parser = Parser::new(tokens, expression.len());
        let root = parser.parse_or(0)?;
        parser.expect_end()?;
        Ok(Filter { root })
    }

    /// Whether one element matches. Errors when a selector names a field that is not there on a
    /// JSON object which is not one of Consul's maps, or when an operator or value does not fit
    /// the selected value.
    pub fn matches(&self, element: &Value) -> Result<bool, FilterError> {
        self.root.evaluate(element)
    }

    /// Keeps the matching elements of an endpoint's answer: an array gives the matching
    /// elements in order; an object (Consul's map answers such as /v1/agent/services, id to
    /// service) gives the entries whose value matches. Anything else is returned unchanged.
    pub fn retain(&self, answer: Value) -> Result<Value, FilterError> {
        match answer {
            Value::Array(items) => {
                let mut kept = Vec::with_capacity(items.len());
                for item in items {
                    if self.matches(&item)? {
                        kept.push(item);
                    }
                }
                Ok(Value::Array(kept))
            }
            Value::Object(entries) => {
                let mut kept = Map::new();
                for (key, value) in entries {
                    if self.matches(&value)? {
                        kept.insert(key, value);
                    }
                }
                Ok(Value::Object(kept))
            }
            other => Ok(other),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Equal,
    NotEqual,
    /// `Ident(.Ident | ["key"])*`, already split into segments. Keywords arrive as one-segment
    /// selectors; the parser tells them apart by position, as go-bexpr's grammar does.
    Selector(Vec<String>),
    Str(String),
    Number(String),
    End,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    offset: usize,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

fn syntax(offset: usize, message: impl Into<String>) -> FilterError {
    FilterError::Syntax { offset, message: message.into() }
}

fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + ahead).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    /// The character at the cursor, for messages (the cursor is always on a char boundary:
    /// it only ever steps over ASCII bytes or whole chars).
    fn char_here(&self) -> char {
        self.src.get(self.pos..).and_then(|rest| rest.chars().next()).unwrap_or(' ')
    }

    fn tokenize(mut self) -> Result<Vec<Token>, FilterError> {
        let mut tokens = Vec::new();
        loop {
            self.skip_space();
            let offset = self.pos;
            let Some(c) = self.peek() else {
                tokens.push(Token { tok: Tok::End, offset });
                return Ok(tokens);
            };
            let tok = match c {
                b'(' => {
                    self.pos += 1;
                    Tok::LParen
                }
                b')' => {
                    self.pos += 1;
                    Tok::RParen
                }
                b'=' | b'!' => self.comparison()?,
                b'"' | b'`' => Tok::Str(self.string()?),
                b'-' | b'0'..=b'9' => Tok::Number(self.number()?),
                c if c.is_ascii_alphabetic() => Tok::Selector(self.selector()?),
                b'[' => return Err(syntax(offset, "an index such as [\"key\"] must follow a selector directly")),
                _ => return Err(self.unexpected_char()),
            };
            tokens.push(Token { tok, offset });
        }
    }

    fn unexpected_char(&self) -> FilterError {
        syntax(
            self.pos,
            format!(
                "unexpected character {:?}; quote values that are not plain words, as in \"my-svc\"",
                self.char_here()
            ),
        )
    }

    fn comparison(&mut self) -> Result<Tok, FilterError> {
        let tok = match (self.peek(), self.peek_at(1)) {
            (Some(b'='), Some(b'=')) => Tok::Equal,
            (Some(b'!'), Some(b'=')) => Tok::NotEqual,
            _ => return Err(syntax(self.pos, "expected '==' or '!='")),
        };
        self.pos += 2;
        Ok(tok)
    }

    /// `-?[0-9]+(\.[0-9]+)?`, which go-bexpr wants followed by a space, `)` or the end; anything
    /// else (`10.0.0.1`, `80abc`) is a value that needed quotes.
    fn number(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
            return Err(syntax(start, "expected a digit after '-'"));
        }
        self.digits();
        if self.peek() == Some(b'.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            self.digits();
        }
        if !matches!(self.peek(), None | Some(b')')) && !self.peek().is_some_and(is_space) {
            return Err(syntax(
                start,
                "invalid number literal; quote values that are not plain numbers, as in \"10.0.0.1\"",
            ));
        }
        Ok(self.src[start..self.pos].to_string())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    fn ident(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_ident_char) {
            self.pos += 1;
        }
        self.src[start..self.pos].to_string()
    }

    /// A selector: an identifier, then `.ident` or `["key"]` segments with no space between.
    fn selector(&mut self) -> Result<Vec<String>, FilterError> {
        let mut segments = vec![self.ident()];
        loop {
            match self.peek() {
                Some(b'.') => {
                    if !self.peek_at(1).is_some_and(|c| c.is_ascii_alphabetic()) {
                        return Err(syntax(
                            self.pos + 1,
                            "expected a field name (a letter, then letters, digits or '_') after '.'",
                        ));
                    }
                    self.pos += 1;
                    segments.push(self.ident());
                }
                Some(b'[') => segments.push(self.index()?),
                _ => break,
            }
        }
        // A bare word runs into a character no token starts with (`my-svc`, `a/b`): say so here,
        // where the hint to quote it is right, rather than at the stray character.
        if self.peek().is_some_and(|c| !is_space(c) && !b"()=!\"`".contains(&c)) {
            return Err(self.unexpected_char());
        }
        Ok(segments)
    }

    /// `[ "key" ]` after a selector: a map key that is not an identifier.
    fn index(&mut self) -> Result<String, FilterError> {
        let open = self.pos;
        self.pos += 1;
        self.skip_space();
        if !matches!(self.peek(), Some(b'"' | b'`')) {
            return Err(syntax(self.pos, "expected a quoted key inside [ ], as in Meta[\"some-key\"]"));
        }
        let key = self.string()?;
        self.skip_space();
        if self.peek() != Some(b']') {
            return Err(syntax(self.pos, format!("expected ']' to close the '[' at offset {open}")));
        }
        self.pos += 1;
        Ok(key)
    }

    /// A backtick raw string, or a double-quoted one with Go's escapes (go-bexpr unquotes with
    /// Go's strconv.Unquote). Unlike go-bexpr v0.1.2, whose grammar ends a string at the first
    /// `"` even after a backslash, `\"` is accepted inside.
    fn string(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        let quote = self.peek();
        self.pos += 1;
        if quote == Some(b'`') {
            let rest = &self.src[self.pos..];
            let Some(len) = rest.find('`') else {
                return Err(syntax(start, "unterminated string literal"));
            };
            self.pos += len + 1;
            return Ok(rest[..len].to_string());
        }
        let mut out = String::new();
        loop {
            let Some(c) = self.src[self.pos..].chars().next() else {
                return Err(syntax(start, "unterminated string literal"));
            };
            match c {
                '"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                '\\' => out.push(self.escape()?),
                _ => {
                    self.pos += c.len_utf8();
                    out.push(c);
                }
            }
        }
    }

    /// One escape sequence at the cursor (on the backslash).
    fn escape(&mut self) -> Result<char, FilterError> {
        let at = self.pos;
        self.pos += 1;
        let Some(kind) = self.peek() else {
            return Err(syntax(at, "unterminated string literal"));
        };
        if !kind.is_ascii() {
            return Err(syntax(at, format!("unknown escape sequence \\{}", self.char_here())));
        }
        self.pos += 1;
        let simple = match kind {
            b'a' => Some('\x07'),
            b'b' => Some('\x08'),
            b'f' => Some('\x0c'),
            b'n' => Some('\n'),
            b'r' => Some('\r'),
            b't' => Some('\t'),
            b'v' => Some('\x0b'),
            b'\\' => Some('\\'),
            b'"' => Some('"'),
            _ => None,
        };
        if let Some(c) = simple {
            return Ok(c);
        }
        let code = match kind {
            b'x' => self.radix_digits(2, 16, at)?,
            b'u' => self.radix_digits(4, 16, at)?,
            b'U' => self.radix_digits(8, 16, at)?,
            b'0'..=b'7' => {
                self.pos -= 1;
                self.radix_digits(3, 8, at)?
            }
            _ => return Err(syntax(at, format!("unknown escape sequence \\{}", char::from(kind)))),
        };
        // Go's \x and octal escapes are bytes; only the ASCII ones are whole characters.
        if matches!(kind, b'x' | b'0'..=b'7') && code > 0x7f {
            return Err(syntax(at, "byte escapes above \\x7f are not supported; use \\u00XX"));
        }
        char::from_u32(code).ok_or_else(|| syntax(at, "escape sequence is not a valid Unicode character"))
    }

    fn radix_digits(&mut self, count: usize, radix: u32, at: usize) -> Result<u32, FilterError> {
        let digits = self.src.get(self.pos..self.pos + count).filter(|d| d.chars().all(|c| c.is_digit(radix)));
        let Some(digits) = digits else {
            return Err(syntax(at, format!("escape sequence needs {count} digits in base {radix}")));
        };
        self.pos += count;
        u32::from_str_radix(digits, radix).map_err(|_| syntax(at, "invalid escape sequence"))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone)]
enum Node {
    /// Flattened `a and b and c`, so a long chain costs no depth.
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Match(Match),
}

#[derive(Debug, Clone)]
struct Match {
    selector: Vec<String>,
    op: Op,
    /// The value as written (unquoted); empty for `is empty` / `is not empty`.
    value: String,
}

#[derive(Debug, Clone)]
enum Op {
    Equal,
    NotEqual,
    IsEmpty,
    IsNotEmpty,
    In,
    NotIn,
    Contains,
    NotContains,
    /// Compiled once at parse, so a bad pattern is a parse error.
    Matches(Regex),
    NotMatches(Regex),
}

const OPERATOR_LIST: &str = "==, !=, is empty, is not empty, in, not in, contains, not contains, matches, not matches";

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: Token,
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::LParen => "'('".to_string(),
        Tok::RParen => "')'".to_string(),
        Tok::Equal => "'=='".to_string(),
        Tok::NotEqual => "'!='".to_string(),
        Tok::Selector(segments) => format!("'{}'", segments.join(".")),
        Tok::Str(s) => format!("the string {s:?}"),
        Tok::Number(n) => format!("the number {n}"),
        Tok::End => "the end of the expression".to_string(),
    }
}

/// The keyword a token is, if it is a lone identifier.
fn word(tok: &Tok) -> Option<&str> {
    match tok {
        Tok::Selector(segments) if segments.len() == 1 => segments.first().map(String::as_str),
        _ => None,
    }
}

impl Parser {
    fn new(tokens: Vec<Token>, len: usize) -> Self {
        Parser { tokens, pos: 0, end: Token { tok: Tok::End, offset: len } }
    }

    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).unwrap_or(&self.end)
    }

    fn advance(&mut self) -> Token {
        let token = self.peek().clone();
        if token.tok != Tok::End {
            self.pos += 1;
        }
        token
    }

    fn eat_word(&mut self, keyword: &str) -> bool {
        let found = word(&self.peek().tok) == Some(keyword);
        if found {
            self.pos += 1;
        }
        found
    }

    fn expect_end(&self) -> Result<(), FilterError> {
        let token = self.peek();
        match token.tok {
            Tok::End => Ok(()),
            Tok::RParen => Err(syntax(token.offset, "unmatched ')'")),
            _ => Err(syntax(
                token.offset,
                format!("expected 'and', 'or' or the end of the expression, found {}", describe(&token.tok)),
            )),
        }
    }

    fn parse_or(&mut self, depth: usize) -> Result<Node, FilterError> {
        self.parse_chain(depth, "or", Self::parse_and, Node::Or)
    }

    fn parse_and(&mut self, depth: usize) -> Result<Node, FilterError> {
        self.parse_chain(depth, "and", Self::parse_unary, Node::And)
    }

    /// `term (keyword term)*`, flattened into one node (a lone term stays itself).
    fn parse_chain(
        &mut self,
        depth: usize,
        keyword: &str,
        term: fn(&mut Self, usize) -> Result<Node, FilterError>,
        chain: fn(Vec<Node>) -> Node,
    ) -> Result<Node, FilterError> {
        let first = term(self, depth)?;
        if word(&self.peek().tok) != Some(keyword) {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.eat_word(keyword) {
            terms.push(term(self, depth)?);
        }
        Ok(chain(terms))
    }

    /// `not X`, `( X )` or a match expression. The only recursion that does not consume a
    /// whole match, hence the depth check here.
    fn parse_unary(&mut self, depth: usize) -> Result<Node, FilterError> {
        let offset = self.peek().offset;
        if word(&self.peek().tok) == Some("not") {
            check_depth(depth + 1, offset)?;
            self.pos += 1;
            return Ok(match self.parse_unary(depth + 1)? {
                // `not not X` is X, as go-bexpr folds it.
                Node::Not(inner) => *inner,
                other => Node::Not(Box::new(other)),
            });
        }
        if self.peek().tok == Tok::LParen {
            check_depth(depth + 1, offset)?;
            self.pos += 1;
            let inner = self.parse_or(depth + 1)?;
            let close = self.peek();
            if close.tok != Tok::RParen {
                return Err(syntax(
                    close.offset,
                    format!("expected ')' to close the '(' at offset {offset}, found {}", describe(&close.tok)),
                ));
            }
            self.pos += 1;
            return Ok(inner);
        }
        self.parse_match().map(Node::Match)
    }

    fn parse_match(&mut self) -> Result<Match, FilterError> {
        let left = self.advance();
        if !matches!(left.tok, Tok::Selector(_) | Tok::Str(_) | Tok::Number(_)) {
            return Err(syntax(
                left.offset,
                format!("expected a selector, a value, 'not' or '(', found {}", describe(&left.tok)),
            ));
        }
        let op = self.parse_operator()?;
        if matches!(op, OpWord::In | OpWord::NotIn) {
            // `Value in Selector`: the left side is the value, even when it is a bare word.
            let value = match left.tok {
                Tok::Selector(segments) => segments.join("."),
                Tok::Str(s) | Tok::Number(s) => s,
                _ => String::new(),
            };
            let selector = self.expect_selector(op.text())?;
            let op = if op == OpWord::In { Op::In } else { Op::NotIn };
            return Ok(Match { selector, op, value });
        }
        let Tok::Selector(selector) = left.tok else {
            return Err(syntax(
                left.offset,
                format!(
                    "expected a selector (a field name such as Service.Tags) before '{}', found {}",
                    op.text(),
                    describe(&left.tok)
                ),
            ));
        };
        let (op, value) = match op {
            OpWord::IsEmpty => (Op::IsEmpty, String::new()),
            OpWord::IsNotEmpty => (Op::IsNotEmpty, String::new()),
            _ => {
                let (value_offset, value) = self.expect_value(op.text())?;
                (op.with_value(&value, value_offset)?, value)
            }
        };
        Ok(Match { selector, op, value })
    }

    fn parse_operator(&mut self) -> Result<OpWord, FilterError> {
        let token = self.advance();
        let op = match (&token.tok, word(&token.tok)) {
            (Tok::Equal, _) => OpWord::Equal,
            (Tok::NotEqual, _) => OpWord::NotEqual,
            (_, Some("in")) => OpWord::In,
            (_, Some("contains")) => OpWord::Contains,
            (_, Some("matches")) => OpWord::Matches,
            (_, Some("is")) => self.after_is()?,
            (_, Some("not")) => self.after_not()?,
            _ => {
                return Err(syntax(
                    token.offset,
                    format!("expected an operator ({OPERATOR_LIST}), found {}", describe(&token.tok)),
                ))
            }
        };
        Ok(op)
    }

    fn after_is(&mut self) -> Result<OpWord, FilterError> {
        if self.eat_word("empty") {
            return Ok(OpWord::IsEmpty);
        }
        if self.eat_word("not") && self.eat_word("empty") {
            return Ok(OpWord::IsNotEmpty);
        }
        let token = self.peek();
        Err(syntax(token.offset, format!("expected 'empty' or 'not empty' after 'is', found {}", describe(&token.tok))))
    }

    fn after_not(&mut self) -> Result<OpWord, FilterError> {
        let op = match word(&self.peek().tok) {
            Some("in") => OpWord::NotIn,
            Some("contains") => OpWord::NotContains,
            Some("matches") => OpWord::NotMatches,
            _ => {
                let token = self.peek();
                return Err(syntax(
                    token.offset,
                    format!("expected 'in', 'contains' or 'matches' after 'not', found {}", describe(&token.tok)),
                ));
            }
        };
        self.pos += 1;
        Ok(op)
    }

    fn expect_selector(&mut self, after: &str) -> Result<Vec<String>, FilterError> {
        let token = self.advance();
        match token.tok {
            Tok::Selector(segments) => Ok(segments),
            other => Err(syntax(
                token.offset,
                format!(
                    "expected a selector (a field name such as Service.Tags) after '{after}', found {}",
                    describe(&other)
                ),
            )),
        }
    }

    /// A value: a string, a number, or a bare word (a selector-shaped word is taken as its text,
    /// `a.b` as "a.b", as go-bexpr does).
    fn expect_value(&mut self, after: &str) -> Result<(usize, String), FilterError> {
        let token = self.advance();
        match token.tok {
            Tok::Str(s) | Tok::Number(s) => Ok((token.offset, s)),
            Tok::Selector(segments) => Ok((token.offset, segments.join("."))),
            other => Err(syntax(
                token.offset,
                format!(
                    "expected a value (a quoted string, a number or a word) after '{after}', found {}",
                    describe(&other)
                ),
            )),
        }
    }
}

fn check_depth(depth: usize, offset: usize) -> Result<(), FilterError> {
    if depth > MAX_DEPTH {
        return Err(FilterError::TooDeep { offset });
    }
    Ok(())
}

/// An operator as read, before its value is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpWord {
    Equal,
    NotEqual,
    IsEmpty,
    IsNotEmpty,
    In,
    NotIn,
    Contains,
    NotContains,
    Matches,
    NotMatches,
}

impl OpWord {
    fn text(self) -> &'static str {
        match self {
            OpWord::Equal => "==",
            OpWord::NotEqual => "!=",
            OpWord::IsEmpty => "is empty",
            OpWord::IsNotEmpty => "is not empty",
            OpWord::In => "in",
            OpWord::NotIn => "not in",
            OpWord::Contains => "contains",
            OpWord::NotContains => "not contains",
            OpWord::Matches => "matches",
            OpWord::NotMatches => "not matches",
        }
    }

    /// The evaluable operator for a `Selector op Value` form; compiles a `matches` pattern.
    fn with_value(self, value: &str, offset: usize) -> Result<Op, FilterError> {
        Ok(match self {
            OpWord::Equal => Op::Equal,
            OpWord::NotEqual => Op::NotEqual,
            OpWord::IsEmpty => Op::IsEmpty,
            OpWord::IsNotEmpty => Op::IsNotEmpty,
            OpWord::In => Op::In,
            OpWord::NotIn => Op::NotIn,
            OpWord::Contains => Op::Contains,
            OpWord::NotContains => Op::NotContains,
            OpWord::Matches => Op::Matches(compile_regex(value, offset)?),
            OpWord::NotMatches => Op::NotMatches(compile_regex(value, offset)?),
        })
    }
}

fn compile_regex(pattern: &str, offset: usize) -> Result<Regex, FilterError> {
    RegexBuilder::new(pattern).size_limit(MAX_REGEX_BYTES).build().map_err(|err| FilterError::Regex {
        offset,
        pattern: pattern.to_string(),
        message: regex_message(&err),
    })
}

/// The regex crate's syntax errors span several lines (the pattern, a caret, then
/// "error: ..."); an HTTP error body wants the one line that says what is wrong.
fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    match text.lines().find_map(|line| line.trim().strip_prefix("error:")) {
        Some(reason) => reason.trim().to_string(),
        None => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

impl Node {
    /// Recurses only through `not` and parentheses, which the parser bounds to [`MAX_DEPTH`].
    fn evaluate(&self, element: &Value) -> Result<bool, FilterError> {
        match self {
            Node::And(terms) => {
                for term in terms {
                    if !term.evaluate(element)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Node::Or(terms) => {
                for term in terms {
                    if term.evaluate(element)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Node::Not(inner) => Ok(!inner.evaluate(element)?),
            Node::Match(m) => m.evaluate(element),
        }
    }
}

impl Op {
    fn text(&self) -> &'static str {
        match self {
            Op::Equal => "==",
            Op::NotEqual => "!=",
            Op::IsEmpty => "is empty",
            Op::IsNotEmpty => "is not empty",
            Op::In => "in",
            Op::NotIn => "not in",
            Op::Contains => "contains",
            Op::NotContains => "not contains",
            Op::Matches(_) => "matches",
            Op::NotMatches(_) => "not matches",
        }
    }

    /// The answer when the selector ends in a missing map key (or a nil map, or `null` on the
    /// way): nothing equals, contains or matches what is not there, and it is empty. These are
    /// go-bexpr's `NotPresentDisposition`.
    fn when_missing(&self) -> bool {
        matches!(self, Op::NotEqual | Op::IsEmpty | Op::NotIn | Op::NotContains | Op::NotMatches(_))
    }
}

impl Match {
    /// Walks the selector with an explicit work list, not recursion: a list met before the
    /// selector ends fans out to its elements, and the match holds if it holds for any of them.
    fn evaluate(&self, element: &Value) -> Result<bool, FilterError> {
        let mut pending: Vec<(&Value, usize)> = vec![(element, 0)];
        while let Some((value, index)) = pending.pop() {
            if self.step(value, index, &mut pending)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One step of the walk: applies the operator at the selector's end, or queues where the
    /// next segment leads. True means the whole match holds.
    fn step<'v>(
        &self,
        value: &'v Value,
        index: usize,
        pending: &mut Vec<(&'v Value, usize)>,
    ) -> Result<bool, FilterError> {
        let Some(segment) = self.selector.get(index) else {
            return self.apply(value);
        };
        match value {
            Value::Object(fields) => match fields.get(segment) {
                Some(next) => {
                    pending.push((next, index + 1));
                    Ok(false)
                }
                None if self.is_map_entry(index) => Ok(self.op.when_missing()),
                None => Err(self.unknown_selector(index)),
            },
            Value::Array(items) => {
                // Reversed so the work list visits them in document order.
                pending.extend(items.iter().rev().map(|item| (item, index)));
                Ok(false)
            }
            // Go's nil map or pointer: nothing below it is there.
            Value::Null => Ok(self.op.when_missing()),
            Value::String(_) | Value::Number(_) | Value::Bool(_) => Err(self.unknown_selector(index)),
        }
    }

    /// Whether segment `index`, absent from its object, is a key of one of Consul's maps (or
    /// such a map itself, which Go's nil map would make absent) rather than a missing field.
    fn is_map_entry(&self, index: usize) -> bool {
        let is_map = |i: usize| self.selector.get(i).is_some_and(|name| MAP_FIELDS.contains(&name.as_str()));
        is_map(index) || index.checked_sub(1).is_some_and(is_map)
    }

    fn unknown_selector(&self, index: usize) -> FilterError {
        let end = (index + 1).min(self.selector.len());
        FilterError::UnknownSelector(self.selector[..end].join("."))
    }

    fn unsupported(&self, found: &'static str) -> FilterError {
        FilterError::UnsupportedOperator { operator: self.op.text(), selector: self.selector.join("."), found }
    }

    fn bad_value(&self, expected: &'static str) -> FilterError {
        FilterError::BadValue { value: self.value.clone(), selector: self.selector.join("."), expected }
    }

    /// The operator on the value the selector reached.
    fn apply(&self, value: &Value) -> Result<bool, FilterError> {
        match &self.op {
            Op::Equal => self.equals(value),
            Op::NotEqual => self.equals(value).map(|equal| !equal),
            Op::IsEmpty => self.is_empty(value),
            Op::IsNotEmpty => self.is_empty(value).map(|empty| !empty),
            Op::In | Op::Contains => self.contains(value),
            Op::NotIn | Op::NotContains => self.contains(value).map(|found| !found),
            Op::Matches(re) => self.regex_matches(re, value),
            Op::NotMatches(re) => self.regex_matches(re, value).map(|found| !found),
        }
    }

    /// `==` reads the value as the selected JSON value's type, as go-bexpr coerces it to the Go
    /// field's: a string compares as text, a number as a number, a bool as Go's ParseBool reads
    /// it. `null` compares as the empty string (Go's zero value for the strings it stands for).
    fn equals(&self, value: &Value) -> Result<bool, FilterError> {
        match value {
            Value::String(s) => Ok(*s == self.value),
            Value::Null => Ok(self.value.is_empty()),
            Value::Number(n) => number_equals(n, &self.value).ok_or_else(|| self.bad_value("number")),
            Value::Bool(b) => parse_bool(&self.value).map(|lit| lit == *b).ok_or_else(|| self.bad_value("boolean")),
            Value::Array(_) => Err(self.unsupported("a list (use 'contains' or 'in')")),
            Value::Object(_) => Err(self.unsupported("an object (use 'contains' or 'in' for its keys)")),
        }
    }

    /// go-bexpr allows emptiness checks on lists and maps; cairn also allows them on strings
    /// (`""` is empty) and `null` (Go's nil), which only ever widens what is accepted.
    fn is_empty(&self, value: &Value) -> Result<bool, FilterError> {
        match value {
            Value::String(s) => Ok(s.is_empty()),
            Value::Array(items) => Ok(items.is_empty()),
            Value::Object(fields) => Ok(fields.is_empty()),
            Value::Null => Ok(true),
            Value::Number(_) => Err(self.unsupported("a number")),
            Value::Bool(_) => Err(self.unsupported("a boolean")),
        }
    }

    /// `in` / `contains`: an element of a list, a key of a map, a substring of a string.
    fn contains(&self, value: &Value) -> Result<bool, FilterError> {
        match value {
            Value::String(s) => Ok(s.contains(self.value.as_str())),
            Value::Object(fields) => Ok(fields.contains_key(&self.value)),
            Value::Null => Ok(false),
            Value::Array(items) => {
                for item in items {
                    if self.element_equals(item)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Value::Number(_) => Err(self.unsupported("a number")),
            Value::Bool(_) => Err(self.unsupported("a boolean")),
        }
    }

    /// One list element against the value. A value that does not read as a number or bool
    /// simply does not equal such an element (go-bexpr skips those in mixed lists) rather than
    /// failing the filter.
    fn element_equals(&self, item: &Value) -> Result<bool, FilterError> {
        match item {
            Value::String(s) => Ok(*s == self.value),
            Value::Number(n) => Ok(number_equals(n, &self.value).unwrap_or(false)),
            Value::Bool(b) => Ok(parse_bool(&self.value).is_some_and(|lit| lit == *b)),
            Value::Null => Ok(false),
            Value::Array(_) | Value::Object(_) => {
                Err(self.unsupported("a list of objects (select one of their fields, as in Checks.Status)"))
            }
        }
    }

    /// go-bexpr matches only strings (a list of strings is an error there too); `null` is read
    /// as the empty string, as for `==`.
    fn regex_matches(&self, re: &Regex, value: &Value) -> Result<bool, FilterError> {
        match value {
            Value::String(s) => Ok(re.is_match(s)),
            Value::Null => Ok(re.is_match("")),
            Value::Number(_) => Err(self.unsupported("a number")),
            Value::Bool(_) => Err(self.unsupported("a boolean")),
            Value::Array(_) => Err(self.unsupported("a list")),
            Value::Object(_) => Err(self.unsupported("an object")),
        }
    }
}

/// Compares a JSON number with a literal; `None` when the literal is not a number. JSON keeps no
/// trace of Go's int versus float field types, so both compare numerically: integers exactly,
/// anything else as f64 (so `Port == 1.5` is false rather than an error).
fn number_equals(n: &Number, literal: &str) -> Option<bool> {
    if let Ok(lit) = literal.parse::<i128>() {
        if let Some(i) = n.as_i64() {
            return Some(i128::from(i) == lit);
        }
        if let Some(u) = n.as_u64() {
            return Some(i128::from(u) == lit);
        }
    }
    let lit: f64 = literal.parse().ok().filter(|f: &f64| f.is_finite())?;
    n.as_f64().map(|f| f == lit)
}

/// Go's strconv.ParseBool, which go-bexpr uses for bool fields.
fn parse_bool(literal: &str) -> Option<bool> {
    match literal {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(expression: &str) -> Filter {
        match Filter::parse(expression) {
            Ok(f) => f,
            Err(err) => panic!("{expression:?} should parse: {err}"),
        }
    }

    /// Evaluates `expression` on `element`, panicking on any error.
    fn eval(expression: &str, element: &Value) -> bool {
        match filter(expression).matches(element) {
            Ok(result) => result,
            Err(err) => panic!("{expression:?} should evaluate: {err}"),
        }
    }

    fn eval_err(expression: &str, element: &Value) -> FilterError {
        match filter(expression).matches(element) {
            Ok(result) => panic!("{expression:?} should fail, gave {result}"),
            Err(err) => err,
        }
    }

    fn parse_err(expression: &str) -> FilterError {
        match Filter::parse(expression) {
            Ok(f) => panic!("{expression:?} should not parse, gave {f:?}"),
            Err(err) => err,
        }
    }

    fn syntax_offset(expression: &str) -> usize {
        match parse_err(expression) {
            FilterError::Syntax { offset, .. } => offset,
            other => panic!("{expression:?}: expected a syntax error, got {other:?}"),
        }
    }

    /// A /v1/catalog/nodes element.
    fn node() -> Value {
        json!({
            "ID": "0e5d2a56-3bd4-4b8e-9a1a-2c5d4b7b3e10",
            "Node": "web1",
            "Address": "10.0.0.1",
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": "10.0.0.1", "wan": "198.18.0.1"},
            "Meta": {"env": "prod", "some-key": "x", "empty": ""},
            "CreateIndex": 5,
            "ModifyIndex": 7
        })
    }

    /// A /v1/agent/service-shaped element with every JSON type in it.
    fn service() -> Value {
        json!({
            "ID": "redis1",
            "Service": "redis",
            "Tags": ["primary", "production"],
            "Meta": {"env": "production", "version": "2"},
            "Port": 8080,
            "Offset": -1,
            "Ratio": 1.5,
            "Address": "",
            "Ports": [80, 443],
            "Flags": [true],
            "EnableTagOverride": false,
            "Weights": {"Passing": 1, "Warning": 1},
            "Proxy": null,
            "Note": "say \"hi\"",
            "Path": "a\\b"
        })
    }

    /// A /v1/health/service/:service entry.
    fn health_entry(node: &str, tags: Value, statuses: &[&str]) -> Value {
        let checks: Vec<Value> = statuses
            .iter()
            .enumerate()
            .map(|(i, status)| json!({"Node": node, "CheckID": format!("check{i}"), "Status": status, "ServiceTags": []}))
            .collect();
        json!({
            "Node": {"Node": node, "Address": "10.0.0.2", "Meta": {"env": "prod"}, "TaggedAddresses": null},
            "Service": {"ID": "web", "Service": "web", "Tags": tags, "Meta": {}, "Port": 80},
            "Checks": checks
        })
    }

    // --- operators -------------------------------------------------------------------------

    #[test]
    fn equality_on_strings() {
        let n = node();
        assert!(eval(r#"Node == "web1""#, &n));
        assert!(!eval(r#"Node == "web2""#, &n));
        assert!(eval(r#"Node != "web2""#, &n));
        assert!(!eval(r#"Node != "web1""#, &n));
        // No spaces are needed around == and !=.
        assert!(eval(r#"Node=="web1""#, &n));
        assert!(eval("Node!=web2", &n));
    }

    #[test]
    fn emptiness() {
        let s = service();
        assert!(eval("Address is empty", &s));
        assert!(!eval("Address is not empty", &s));
        assert!(eval("Tags is not empty", &s));
        assert!(!eval("Tags is empty", &s));
        assert!(eval("Meta is not empty", &s));
        assert!(eval("Proxy is empty", &s));
        assert!(eval("Service is not empty", &s));
        assert!(eval("Meta.version is not empty", &s));
        assert!(eval(r#"Tags is empty"#, &json!({"Tags": []})));
        assert!(eval(r#"Meta is empty"#, &json!({"Meta": {}})));
    }

    #[test]
    fn in_and_contains_on_lists() {
        let s = service();
        assert!(eval(r#""primary" in Tags"#, &s));
        assert!(!eval(r#""primar" in Tags"#, &s), "list membership is whole elements");
        assert!(eval(r#""secondary" not in Tags"#, &s));
        assert!(!eval(r#""primary" not in Tags"#, &s));
        assert!(eval(r#"Tags contains "production""#, &s));
        assert!(!eval(r#"Tags contains "qa""#, &s));
        assert!(eval(r#"Tags not contains "qa""#, &s));
        assert!(!eval(r#"Tags not contains "primary""#, &s));
        assert!(eval("primary in Tags", &s), "a bare word is a value on the left of in");
    }

    #[test]
    fn in_and_contains_on_maps_and_strings() {
        let s = service();
        assert!(eval(r#""env" in Meta"#, &s), "on a map, in tests the keys");
        assert!(!eval(r#""production" in Meta"#, &s));
        assert!(eval(r#"Meta contains version"#, &s));
        assert!(eval(r#"Meta not contains nope"#, &s));
        assert!(eval(r#""edi" in Service"#, &s), "on a string, in is a substring test");
        assert!(eval(r#"Service contains "red""#, &s));
        assert!(eval(r#"Service not contains "x""#, &s));
        assert!(!eval(r#""x" in Proxy"#, &s), "null contains nothing");
        assert!(eval(r#""x" not in Proxy"#, &s));
    }

    #[test]
    fn in_on_lists_of_numbers_and_bools() {
        let s = service();
        assert!(eval("443 in Ports", &s));
        assert!(eval(r#""80" in Ports"#, &s));
        assert!(!eval("8080 in Ports", &s));
        assert!(!eval("abc in Ports", &s), "a non-number literal equals no number element");
        assert!(eval("true in Flags", &s));
        assert!(!eval("false in Flags", &s));
    }

    #[test]
    fn regular_expressions() {
        let n = node();
        assert!(eval(r#"Node matches "^web[0-9]+$""#, &n));
        assert!(!eval(r#"Node matches "^db""#, &n));
        assert!(eval(r#"Node not matches "^db""#, &n));
        assert!(!eval(r#"Node not matches "web""#, &n));
        assert!(eval(r#"Address matches "^10\\.""#, &n));
        assert!(eval(r"Address matches `^10\.0\.`", &n));
        assert!(eval(r#"Meta.env matches "pro""#, &n), "matching is unanchored, like Go's");
        assert!(eval(r#"Proxy matches "^$""#, &service()), "null matches as the empty string");
    }

    #[test]
    fn operators_that_do_not_fit_the_value_are_errors() {
        let s = service();
        for (expression, operator, found) in [
            (r#"Tags == "primary""#, "==", "a list"),
            (r#"Meta != "x""#, "!=", "an object"),
            ("Port contains 8", "contains", "a number"),
            ("8 in EnableTagOverride", "in", "a boolean"),
            (r#"Tags matches "pri""#, "matches", "a list"),
            (r#"Port not matches "80""#, "not matches", "a number"),
            ("Port is empty", "is empty", "a number"),
            ("EnableTagOverride is not empty", "is not empty", "a boolean"),
        ] {
            match eval_err(expression, &s) {
                FilterError::UnsupportedOperator { operator: op, found: f, .. } => {
                    assert_eq!(op, operator, "{expression}");
                    assert!(f.starts_with(found), "{expression}: {f}");
                }
                other => panic!("{expression}: {other:?}"),
            }
        }
        let err = eval_err(r#"Tags == "primary""#, &s);
        assert!(err.to_string().starts_with(r#"cannot use '==' on selector "Tags": it selects a list"#), "{err}");
    }

    // --- numbers, bools, null --------------------------------------------------------------

    #[test]
    fn numbers_compare_numerically() {
        let s = service();
        assert!(eval("Port == 8080", &s));
        assert!(eval(r#"Port == "8080""#, &s), "a quoted number reads as a number for a number field");
        assert!(eval("Port != 80", &s));
        assert!(!eval("Port == 80", &s));
        assert!(eval("Offset == -1", &s));
        assert!(eval("Ratio == 1.5", &s));
        assert!(eval("Ratio != 1.25", &s));
        assert!(!eval("Port == 8080.5", &s));
        assert!(eval("Port == 8080.0", &s));
        assert!(eval("Weights.Passing == 1", &s));
    }

    #[test]
    fn a_value_that_is_not_a_number_is_an_error_on_a_number() {
        let err = eval_err("Port == abc", &service());
        assert!(matches!(err, FilterError::BadValue { expected: "number", .. }), "{err:?}");
        assert_eq!(err.to_string(), r#"Failed to coerce value "abc" for selector "Port": not a number"#);
        assert!(matches!(eval_err(r#"Port != "inf""#, &service()), FilterError::BadValue { .. }));
    }

    #[test]
    fn bools_read_as_go_parse_bool() {
        let s = service();
        assert!(eval("EnableTagOverride == false", &s));
        assert!(eval("EnableTagOverride != true", &s));
        assert!(eval("EnableTagOverride == F", &s));
        assert!(eval(r#"EnableTagOverride == "0""#, &s));
        assert!(!eval("EnableTagOverride == True", &s));
        let err = eval_err("EnableTagOverride == yes", &s);
        assert_eq!(err.to_string(), r#"Failed to coerce value "yes" for selector "EnableTagOverride": not a boolean"#);
    }

    #[test]
    fn null_compares_as_the_empty_string() {
        let s = service();
        assert!(eval(r#"Proxy == """#, &s));
        assert!(!eval(r#"Proxy == "x""#, &s));
        assert!(eval(r#"Proxy != "x""#, &s));
    }

    #[test]
    fn a_strings_type_decides_even_for_number_looking_values() {
        let e = json!({"Name": "8080", "Version": "2"});
        assert!(eval("Name == 8080", &e));
        assert!(!eval("Name == 8080.0", &e), "a string field compares as text");
        assert!(eval(r#"Version != "3""#, &e));
    }

    // --- quoting and values ----------------------------------------------------------------

    #[test]
    fn quoting_forms() {
        let s = service();
        assert!(eval(r#"Note == "say \"hi\"""#, &s), "escaped double quote");
        assert!(eval(r#"Path == "a\\b""#, &s), "escaped backslash");
        assert!(eval(r"Path == `a\b`", &s), "raw strings keep backslashes");
        assert!(eval(r#"Service == "\u0072edis""#, &s), "\\u escape");
        assert!(eval(r#"Service == "\x72edis""#, &s), "\\x escape");
        assert!(eval(r#"Service == "\162edis""#, &s), "octal escape");
        assert!(eval("Service == redis", &s), "bare word");
        assert!(eval(r#"Service == `redis`"#, &s));
        let e = json!({"Name": "a.b", "Text": "tab\there", "Multi": "x\ny"});
        assert!(eval("Name == a.b", &e), "a dotted bare word is its text");
        assert!(eval(r#"Text == "tab\there""#, &e));
        assert!(eval("Multi == \"x\\ny\"", &e));
        assert!(eval(r#"Name == """#, &json!({"Name": ""})));
    }

    #[test]
    fn whitespace_is_free_outside_strings() {
        let n = node();
        assert!(eval("\t Node  ==\n\"web1\"\r\n and\tMeta.env == prod ", &n));
        assert!(eval("(Node == web1)", &n));
        assert!(eval("( ( Node == web1 ) )", &n));
    }

    // --- boolean structure -----------------------------------------------------------------

    #[test]
    fn and_or_not() {
        let n = node();
        assert!(eval("Node == web1 and Meta.env == prod", &n));
        assert!(!eval("Node == web1 and Meta.env == dev", &n));
        assert!(eval("Node == web2 or Meta.env == prod", &n));
        assert!(!eval("Node == web2 or Meta.env == dev", &n));
        assert!(eval("not Node == web2", &n));
        assert!(!eval("not Node == web1", &n));
        assert!(eval("not not Node == web1", &n));
        assert!(!eval("not not not Node == web1", &n));
        assert!(eval("not (Node == web2 or Node == web3)", &n));
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        let n = node();
        // true or (false and false) = true; (true or false) and false would be false.
        assert!(eval("Node == web1 or Node == x and Node == y", &n));
        // (false and false) or true = true.
        assert!(eval("Node == x and Node == y or Node == web1", &n));
        // (not false) and false = false, whereas not (false and false) = true.
        assert!(!eval("not Node == x and Node == y", &n));
        assert!(eval("not (Node == x and Node == y)", &n));
        // Parentheses override: (true or false) and false = false.
        assert!(!eval("(Node == web1 or Node == x) and Node == y", &n));
        // (not true) or true = true.
        assert!(eval("not Node == web1 or Node == web1", &n));
    }

    #[test]
    fn and_or_short_circuit_like_go_bexpr() {
        let n = node();
        // The right side would fail (unknown selector) but is never reached.
        assert!(!eval("Node == x and Nope == y", &n));
        assert!(eval("Node == web1 or Nope == y", &n));
        assert!(matches!(eval_err("Node == web1 and Nope == y", &n), FilterError::UnknownSelector(_)));
    }

    #[test]
    fn keywords_are_lowercase() {
        assert!(Filter::parse("Node == a AND Node == b").is_err());
        assert!(Filter::parse("Node == a Or Node == b").is_err());
        assert!(Filter::parse("NOT Node == a").is_err());
        assert!(Filter::parse("Tags CONTAINS a").is_err());
        assert!(Filter::parse("Tags is EMPTY").is_err());
    }

    #[test]
    fn long_flat_chains_cost_no_depth() {
        let chain = vec!["Node == web1"; 200].join(" and ");
        assert!(chain.len() < MAX_EXPRESSION_BYTES);
        assert!(eval(&chain, &node()));
        let chain = vec!["Node == x"; 200].join(" or ");
        assert!(!eval(&chain, &node()));
    }

    // --- selectors -------------------------------------------------------------------------

    #[test]
    fn map_selectors_present() {
        let n = node();
        assert!(eval("Meta.env == prod", &n));
        assert!(eval(r#"Meta["env"] == prod"#, &n));
        assert!(eval(r#"Meta[ "some-key" ] == x"#, &n));
        assert!(eval(r"Meta[`some-key`] == x", &n));
        assert!(eval(r#"TaggedAddresses.wan == "198.18.0.1""#, &n));
        assert!(eval("Meta.empty is empty", &n));
    }

    #[test]
    fn map_selectors_missing_key() {
        let n = node();
        assert!(!eval("Meta.team == web", &n));
        assert!(eval("Meta.team != web", &n));
        assert!(eval("Meta.team is empty", &n));
        assert!(!eval("Meta.team is not empty", &n));
        assert!(!eval(r#""a" in Meta.team"#, &n));
        assert!(eval(r#""a" not in Meta.team"#, &n));
        assert!(!eval(r#"Meta.team contains "a""#, &n));
        assert!(eval(r#"Meta.team not contains "a""#, &n));
        assert!(!eval(r#"Meta.team matches ".*""#, &n));
        assert!(eval(r#"Meta.team not matches ".*""#, &n));
        assert!(!eval(r#"Meta["other key"] == x"#, &n));
        assert!(!eval("TaggedAddresses.lan_ipv6 == x", &n));
    }

    #[test]
    fn missing_or_null_maps_are_nil_maps() {
        let bare = json!({"Node": "n", "NodeMeta": null});
        assert!(eval("NodeMeta.os != linux", &bare));
        assert!(eval("NodeMeta is empty", &bare));
        assert!(eval("Meta is empty", &bare), "a map field left out behaves as Go's nil map");
        assert!(!eval("Meta.env == prod", &bare));
        assert!(eval("ServiceMeta.version != \"2\"", &bare));
        assert!(!eval("\"lan\" in ServiceTaggedAddresses", &bare));
    }

    #[test]
    fn structs_inside_maps_are_checked() {
        let s = json!({"TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}}});
        assert!(eval("TaggedAddresses.lan.Address == `10.0.0.1`", &s));
        assert!(!eval("TaggedAddresses.wan.Address == x", &s), "a missing map key is not an error");
        let err = eval_err("TaggedAddresses.lan.Adress == x", &s);
        assert_eq!(err.to_string(), r#"Selector "TaggedAddresses.lan.Adress" is not valid"#);
    }

    #[test]
    fn unknown_selectors_are_errors() {
        let n = node();
        let err = eval_err("Nodename == web1", &n);
        assert_eq!(err.to_string(), r#"Selector "Nodename" is not valid"#);
        // The selector is reported up to the segment that is missing.
        let err = eval_err("Foo.Bar == x", &n);
        assert_eq!(err.to_string(), r#"Selector "Foo" is not valid"#);
        let entry = health_entry("n1", json!([]), &["passing"]);
        let err = eval_err("Service.Nope == x", &entry);
        assert_eq!(err.to_string(), r#"Selector "Service.Nope" is not valid"#);
        // Selecting into a string, number or bool.
        assert_eq!(eval_err("Address.x == y", &n).to_string(), r#"Selector "Address.x" is not valid"#);
        assert_eq!(eval_err("CreateIndex.x == 1", &n).to_string(), r#"Selector "CreateIndex.x" is not valid"#);
        assert!(matches!(eval_err("EnableTagOverride.x is empty", &service()), FilterError::UnknownSelector(_)));
        assert!(matches!(eval_err(r#""x" in Nope"#, &n), FilterError::UnknownSelector(_)));
    }

    // --- lists of objects (implicit any) ---------------------------------------------------

    #[test]
    fn selectors_through_lists_of_objects_match_any_element() {
        let mixed = health_entry("n1", json!(["primary"]), &["passing", "critical"]);
        let passing = health_entry("n2", json!(["primary"]), &["passing", "passing"]);
        let none = health_entry("n3", json!(["primary"]), &[]);
        // One passing check is enough, as Consul documents for Checks.Status.
        assert!(eval("Checks.Status == passing", &mixed));
        assert!(eval("Checks.Status == passing", &passing));
        // != is also "any": some check is not passing.
        assert!(eval("Checks.Status != passing", &mixed));
        assert!(!eval("Checks.Status != passing", &passing));
        // All checks passing is spelled with not.
        assert!(!eval("not Checks.Status != passing", &mixed));
        assert!(eval("not Checks.Status != passing", &passing));
        // in / contains apply per element (substring on each Status).
        assert!(eval(r#""crit" in Checks.Status"#, &mixed));
        assert!(!eval(r#""crit" in Checks.Status"#, &passing));
        assert!(eval(r#"Checks.CheckID matches "^check1$""#, &mixed));
        // No elements: nothing holds, not even != (go-bexpr v0.1.2 does the same).
        assert!(!eval("Checks.Status == passing", &none));
        assert!(!eval("Checks.Status != passing", &none));
        assert!(eval("Checks is empty", &none));
        assert!(eval("Checks is not empty", &mixed));
        // A typo is still caught on the elements.
        assert_eq!(eval_err("Checks.Stats == passing", &mixed).to_string(), r#"Selector "Checks.Stats" is not valid"#);
        // A list of objects itself has no members to test.
        assert!(matches!(eval_err(r#""passing" in Checks"#, &mixed), FilterError::UnsupportedOperator { .. }));
    }

    // --- syntax errors ---------------------------------------------------------------------

    #[test]
    fn syntax_errors_say_where() {
        assert_eq!(syntax_offset(""), 0);
        assert_eq!(syntax_offset("   "), 3);
        assert_eq!(syntax_offset("Node"), 4);
        assert_eq!(syntax_offset("Node =="), 7);
        assert_eq!(syntax_offset("Node web1"), 5);
        assert_eq!(syntax_offset("Node = web1"), 5);
        assert_eq!(syntax_offset("Node == web1 and"), 16);
        assert_eq!(syntax_offset("Node == web1 web2"), 13);
        assert_eq!(syntax_offset("(Node == web1"), 13);
        assert_eq!(syntax_offset("Node == web1)"), 12);
        assert_eq!(syntax_offset("()"), 1);
        assert_eq!(syntax_offset(r#""web1" == Node"#), 0);
        assert_eq!(syntax_offset("8080 == Port"), 0);
        assert_eq!(syntax_offset("Tags is full"), 8);
        assert_eq!(syntax_offset("Tags not equal x"), 9);
        assert_eq!(syntax_offset("x in 8080"), 5);
        assert_eq!(syntax_offset("x in \"Tags\""), 5);
        assert_eq!(syntax_offset(r#"Node == "web1"#), 8);
        assert_eq!(syntax_offset("Node == `web1"), 8);
        assert_eq!(syntax_offset("Meta[env] == x"), 5);
        assert_eq!(syntax_offset(r#"Meta["env" == x"#), 11);
        assert_eq!(syntax_offset("Meta. env == x"), 5);
        assert_eq!(syntax_offset(r#"["a"] == x"#), 0);
        assert_eq!(syntax_offset(r#"Node == "\q""#), 9);
        assert_eq!(syntax_offset(r#"Node == "\xff""#), 9);
        assert_eq!(syntax_offset(r#"Node == "\é""#), 9);
        assert_eq!(parse_err(r#"Node == "\é""#).to_string(), r"at offset 9: unknown escape sequence \é");
        assert_eq!(syntax_offset("Node == -x"), 8);
        assert_eq!(syntax_offset("Node == héllo"), 9);
        assert_eq!(syntax_offset("Node == a & b"), 10);
    }

    #[test]
    fn syntax_errors_read_clearly() {
        let err = parse_err("Node web1");
        assert_eq!(
            err.to_string(),
            "at offset 5: expected an operator (==, !=, is empty, is not empty, in, not in, contains, \
             not contains, matches, not matches), found 'web1'"
        );
        let err = parse_err("Address == 10.0.0.1");
        assert!(err.to_string().contains("quote values that are not plain numbers"), "{err}");
        let err = parse_err("Service == my-svc");
        assert!(err.to_string().contains("quote values that are not plain words"), "{err}");
        let err = parse_err("(Node == web1");
        assert!(err.to_string().contains("expected ')' to close the '(' at offset 0"), "{err}");
        let err = parse_err(r#""web1" == Node"#);
        assert!(err.to_string().contains("expected a selector"), "{err}");
    }

    #[test]
    fn bad_regular_expressions_fail_at_parse() {
        let err = parse_err(r#"Node matches "(web""#);
        match &err {
            FilterError::Regex { offset, pattern, message } => {
                assert_eq!(*offset, 13);
                assert_eq!(pattern, "(web");
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().starts_with(r#"at offset 13: invalid regular expression "(web": "#), "{err}");
        assert!(matches!(parse_err(r#"Node not matches "[z-a]""#), FilterError::Regex { .. }));
    }

    // --- bounds ----------------------------------------------------------------------------

    #[test]
    fn length_limit() {
        let base = "Node == web1";
        let at_limit = format!("{base}{}", " ".repeat(MAX_EXPRESSION_BYTES - base.len()));
        assert_eq!(at_limit.len(), MAX_EXPRESSION_BYTES);
        assert!(eval(&at_limit, &node()));
        let over = format!("{at_limit} ");
        let err = parse_err(&over);
        assert!(matches!(err, FilterError::TooLong { length: 4097 }), "{err:?}");
        assert_eq!(err.to_string(), "the expression is 4097 bytes long; at most 4096 are allowed");
    }

    #[test]
    fn depth_limit() {
        let nested = |levels: usize| format!("{}Node == web1{}", "(".repeat(levels), ")".repeat(levels));
        assert!(eval(&nested(MAX_DEPTH), &node()));
        let err = parse_err(&nested(MAX_DEPTH + 1));
        assert!(matches!(err, FilterError::TooDeep { offset: 32 }), "{err:?}");
        assert!(err.to_string().contains("deeper than 32 levels"), "{err}");

        let nots = |levels: usize| format!("{}Node == web1", "not ".repeat(levels));
        assert!(eval(&nots(MAX_DEPTH), &node()));
        assert!(matches!(parse_err(&nots(MAX_DEPTH + 1)), FilterError::TooDeep { .. }));

        let mixed = "not (".repeat(16) + "Node == web1" + &")".repeat(16);
        assert!(eval(&mixed, &node()));
        let mixed = "not (".repeat(17) + "Node == web1" + &")".repeat(17);
        assert!(matches!(parse_err(&mixed), FilterError::TooDeep { .. }));

        // A hostile filter at the byte limit is refused quickly, without deep recursion.
        let hostile = "(".repeat(MAX_EXPRESSION_BYTES);
        assert!(matches!(parse_err(&hostile), FilterError::TooDeep { .. }));
    }

    // --- retain ----------------------------------------------------------------------------

    #[test]
    fn retain_on_arrays_keeps_order() {
        let nodes = json!([
            {"Node": "a", "Address": "10.0.0.1", "Meta": {"env": "prod"}},
            {"Node": "b", "Address": "192.168.0.1", "Meta": {"env": "prod"}},
            {"Node": "c", "Address": "10.0.0.3", "Meta": {"env": "dev"}},
            {"Node": "d", "Address": "10.0.0.4", "Meta": {"env": "prod"}},
            {"Node": "e", "Address": "10.0.0.5", "Meta": {}}
        ]);
        let kept = filter(r#"Meta.env == prod and Address matches "^10\\.""#).retain(nodes);
        let names: Vec<String> = match kept {
            Ok(Value::Array(items)) => items.iter().map(|n| n["Node"].as_str().unwrap_or("?").to_string()).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(names, ["a", "d"]);
    }

    #[test]
    fn retain_on_maps_keeps_matching_entries() {
        // The /v1/agent/services example from Consul's filtering documentation.
        let services = json!({
            "redis1": {"ID": "redis1", "Service": "redis", "Tags": ["primary", "production"],
                       "Meta": {"env": "production", "foo": "bar"}, "Port": 1234},
            "redis2": {"ID": "redis2", "Service": "redis", "Tags": ["secondary", "production"],
                       "Meta": {"env": "production", "foo": "bar"}, "Port": 1235},
            "redis3": {"ID": "redis3", "Service": "redis", "Tags": ["primary", "qa"],
                       "Meta": {"env": "qa"}, "Port": 1234}
        });
        let kept = filter(r#"Meta.env == "qa""#).retain(services.clone()).ok();
        assert_eq!(kept, Some(json!({"redis3": services["redis3"].clone()})));
        let kept = filter(r#"Tags contains primary and Port == 1234"#).retain(services.clone()).ok();
        assert_eq!(kept, Some(json!({"redis1": services["redis1"].clone(), "redis3": services["redis3"].clone()})));
        let kept = filter("Meta.foo is empty").retain(services.clone()).ok();
        assert_eq!(kept, Some(json!({"redis3": services["redis3"].clone()})));
    }

    #[test]
    fn retain_leaves_other_answers_alone_and_propagates_errors() {
        let f = filter("Node == a");
        assert_eq!(f.retain(json!("text")).ok(), Some(json!("text")));
        assert_eq!(f.retain(json!(null)).ok(), Some(json!(null)));
        assert_eq!(f.retain(json!([])).ok(), Some(json!([])));
        assert_eq!(f.retain(json!({})).ok(), Some(json!({})));
        let err = filter("Nodee == a").retain(json!([{"Node": "a"}]));
        assert!(matches!(err, Err(FilterError::UnknownSelector(_))));
    }

    // --- realistic Consul filters ----------------------------------------------------------

    #[test]
    fn health_service_by_tag() {
        let entries = json!([
            health_entry("n1", json!(["primary", "v1"]), &["passing"]),
            health_entry("n2", json!(["secondary"]), &["passing"]),
            health_entry("n3", json!(["primary"]), &["critical"])
        ]);
        let kept = filter(r#"Service.Tags contains "primary""#).retain(entries.clone());
        let nodes: Vec<&str> = match &kept {
            Ok(Value::Array(items)) => items.iter().filter_map(|e| e["Node"]["Node"].as_str()).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(nodes, ["n1", "n3"]);
        let kept = filter(r#"Service.Tags contains "primary" and Checks.Status == passing"#).retain(entries);
        assert!(matches!(&kept, Ok(Value::Array(items)) if items.len() == 1), "{kept:?}");
        let e = health_entry("n1", json!(["primary"]), &["passing"]);
        assert!(eval("Node.Meta.env == prod and Service.Port == 80", &e));
        assert!(eval("Node.TaggedAddresses.lan is empty", &e), "null TaggedAddresses is a nil map");
        assert!(eval("Service.Meta.version != \"2\"", &e));
    }

    #[test]
    fn catalog_service_by_service_meta() {
        let entries = json!([
            {"Node": "node-1", "NodeMeta": {"os": "darwin"}, "ServiceMeta": {"version": "2"}, "ServiceTags": ["tag"]},
            {"Node": "node-2", "NodeMeta": {"os": "linux"}, "ServiceMeta": {"version": "1"}, "ServiceTags": []},
            {"Node": "node-4", "NodeMeta": {"os": "linux"}, "ServiceMeta": {}, "ServiceTags": null}
        ]);
        let names = |expression: &str| -> Vec<String> {
            match filter(expression).retain(entries.clone()) {
                Ok(Value::Array(items)) => {
                    items.iter().map(|n| n["Node"].as_str().unwrap_or("?").to_string()).collect()
                }
                other => panic!("{expression}: {other:?}"),
            }
        };
        assert_eq!(names(r#"ServiceMeta.version != "2""#), ["node-2", "node-4"]);
        assert_eq!(names(r#"NodeMeta.os == "linux""#), ["node-2", "node-4"]);
        assert_eq!(names("ServiceTags is empty"), ["node-2", "node-4"]);
        assert_eq!(names(r#""tag" in ServiceTags"#), ["node-1"]);
        assert_eq!(names(r#"Node matches "^node-[12]$" and not NodeMeta.os == darwin"#), ["node-2"]);
    }

    #[test]
    fn health_node_checks() {
        // The /v1/health/node/:node example from Consul's filtering documentation.
        let checks = json!([
            {"Node": "node-1", "CheckID": "node-health", "Status": "critical", "ServiceName": "", "ServiceTags": []},
            {"Node": "node-1", "CheckID": "svc-web-health", "Status": "warning", "ServiceName": "web", "ServiceTags": []}
        ]);
        let kept = filter(r#"ServiceName != """#).retain(checks.clone()).ok();
        assert_eq!(kept, Some(json!([checks[1].clone()])));
    }
}
