//! Rule expressions: a small language over named features, compiled once at config load.
//!
//! Sources are compiled straight into a flat postfix program (no intermediate tree), so a
//! long `a + b + c + ...` chain never becomes a deep structure that would need recursion to
//! evaluate or drop. Parser recursion is bounded by the nesting cap, and the evaluation
//! stack size is computed at compile time, so eval needs neither allocation nor recursion.

/// Maximum nesting of `(`, function calls, `!`/`not` and unary `-`; keeps hostile config
/// from overflowing the parser's stack.
const MAX_DEPTH: usize = 64;

/// Hard ceiling on the evaluation stack. With `MAX_DEPTH` in force an expression cannot
/// need more than roughly six slots per nesting level, so this is a safety net only.
const MAX_STACK: usize = 512;

/// A compiled expression. Cheap to evaluate: a tree (or flat op list) over feature indices, no strings at eval time.
#[derive(Debug, Clone)]
pub struct Expr {
    src: String,
    code: Box<[Op]>,
    max_stack: usize,
    features: Box<[usize]>,
}

/// Why an expression failed to compile. Columns are 1-based character positions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    /// Malformed source; `msg` says what was expected at `col`.
    #[error("column {col}: {msg}")]
    Syntax {
        /// 1-based character position of the offending token.
        col: usize,
        /// What was expected and what was found.
        msg: String,
    },
    /// An identifier that the lookup function did not recognise.
    #[error("column {col}: unknown feature `{name}`")]
    UnknownFeature {
        /// 1-based character position of the identifier.
        col: usize,
        /// The identifier as written.
        name: String,
    },
}

impl Expr {
    /// `lookup` maps a feature name to its index in the values slice given to `eval`.
    pub fn compile(src: &str, lookup: impl Fn(&str) -> Option<usize>) -> Result<Expr, ExprError> {
        let mut p = Parser::new(src, lookup)?;
        p.parse_expr()?;
        match p.tok.kind {
            Kind::Eof => {}
            Kind::RParen => {
                return Err(syntax(
                    p.tok.col,
                    "unmatched `)`; expected an operator or end of input".to_string(),
                ))
            }
            _ => {
                let found = p.describe(&p.tok);
                return Err(syntax(
                    p.tok.col,
                    format!("expected an operator or end of input, found {found}"),
                ));
            }
        }
        let mut features: Vec<usize> = p
            .code
            .iter()
            .filter_map(|op| match op {
                Op::Load(i) => Some(*i),
                Op::Compare(i, _, _) => Some(*i as usize),
                _ => None,
            })
            .collect();
        features.sort_unstable();
        features.dedup();
        Ok(Expr {
            src: src.to_string(),
            code: p.code.into_boxed_slice(),
            max_stack: p.max_height,
            features: features.into_boxed_slice(),
        })
    }

    /// Numeric value; booleans are 1.0 / 0.0.
    pub fn eval(&self, values: &[f64]) -> f64 {
        // Small fixed stacks keep the zero-initialisation cost negligible for the common
        // case; only pathological nesting pays for the big one.
        match self.max_stack {
            0..=8 => self.run::<8>(values),
            9..=32 => self.run::<32>(values),
            _ => self.run::<MAX_STACK>(values),
        }
    }

    /// True when eval is non-zero and not NaN.
    pub fn matches(&self, values: &[f64]) -> bool {
        // Most rules are one comparison of a feature with a number: no interpreter.
        if let [Op::Compare(i, b, c)] = *self.code {
            return truthy(b.apply(load(values, i as usize), c));
        }
        truthy(self.eval(values))
    }

    /// The source text it was compiled from.
    pub fn source(&self) -> &str {
        &self.src
    }

    /// Indices of the features it reads (deduplicated, sorted).
    pub fn features(&self) -> Vec<usize> {
        self.features.to_vec()
    }

    fn run<const N: usize>(&self, values: &[f64]) -> f64 {
        let mut stack = [0.0f64; N];
        let mut sp = 0usize;
        let mut pc = 0usize;
        let code = &*self.code;
        while let Some(&op) = code.get(pc) {
            pc += 1;
            match op {
                Op::Const(c) => {
                    stack[sp] = c;
                    sp += 1;
                }
                Op::Load(i) => {
                    stack[sp] = load(values, i);
                    sp += 1;
                }
                Op::Compare(i, b, c) => {
                    stack[sp] = b.apply(load(values, i as usize), c);
                    sp += 1;
                }
                Op::Unary(u) => {
                    let top = &mut stack[sp - 1];
                    *top = u.apply(*top);
                }
                Op::Binary(b) => {
                    sp -= 1;
                    stack[sp - 1] = b.apply(stack[sp - 1], stack[sp]);
                }
                Op::AndJump(target) => {
                    if truthy(stack[sp - 1]) {
                        sp -= 1;
                    } else {
                        stack[sp - 1] = 0.0;
                        pc = target;
                    }
                }
                Op::OrJump(target) => {
                    if truthy(stack[sp - 1]) {
                        stack[sp - 1] = 1.0;
                        pc = target;
                    } else {
                        sp -= 1;
                    }
                }
            }
        }
        stack[0]
    }
}

/// Out-of-range reads 0.0 so a mismatched feature table degrades instead of taking the
/// request path down.
#[inline(always)]
fn load(values: &[f64], i: usize) -> f64 {
    values.get(i).copied().unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Const(f64),
    Load(usize),
    /// `Load(i) Const(c) Binary(cmp)` in one step (`feature >= 4`, the shape of most
    /// rules): a third of the dispatches. The index is u32 to keep ops 16 bytes.
    Compare(u32, Bin, f64),
    Unary(Un),
    Binary(Bin),
    /// Left operand of `&&` is on top: if falsy it becomes the result (0.0) and control
    /// skips the right operand; otherwise it is popped and the right operand runs.
    AndJump(usize),
    /// Mirror of `AndJump` for `||`.
    OrJump(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Un {
    Neg,
    Not,
    Abs,
    /// Normalises the right operand of `&&`/`||` to 1.0/0.0.
    Truthy,
}

impl Un {
    #[inline(always)]
    fn apply(self, x: f64) -> f64 {
        match self {
            Un::Neg => -x,
            Un::Not => flag(!truthy(x)),
            Un::Abs => x.abs(),
            Un::Truthy => flag(truthy(x)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Bin {
    fn compares(self) -> bool {
        matches!(self, Bin::Lt | Bin::Le | Bin::Gt | Bin::Ge | Bin::Eq | Bin::Ne)
    }

    #[inline(always)]
    fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            Bin::Add => a + b,
            Bin::Sub => a - b,
            Bin::Mul => a * b,
            // Rates over a zero count must not poison scores with NaN/inf.
            Bin::Div => {
                if b == 0.0 {
                    0.0
                } else {
                    a / b
                }
            }
            Bin::Min => a.min(b),
            Bin::Max => a.max(b),
            Bin::Lt => flag(a < b),
            Bin::Le => flag(a <= b),
            Bin::Gt => flag(a > b),
            Bin::Ge => flag(a >= b),
            Bin::Eq => flag(a == b),
            Bin::Ne => flag(a != b),
        }
    }
}

#[inline(always)]
fn truthy(x: f64) -> bool {
    x != 0.0 && !x.is_nan()
}

#[inline(always)]
fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn syntax(col: usize, msg: String) -> ExprError {
    ExprError::Syntax { col, msg }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Num(f64),
    Ident(String),
    True,
    False,
    And,
    Or,
    Not,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Cmp(Bin),
    /// A character the language has no use for; reported by the parser so the message can
    /// say what was expected in that position.
    Other,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    /// 1-based column of the first character.
    col: usize,
    /// Exclusive end, as a 0-based char index.
    end: usize,
}

struct Parser<F> {
    chars: Vec<char>,
    /// Lexer position (0-based char index) just past `tok`.
    pos: usize,
    /// One token of lookahead, lexed lazily so the earliest error in the source wins.
    tok: Token,
    lookup: F,
    code: Vec<Op>,
    height: usize,
    max_height: usize,
    depth: usize,
    /// Ops before this index are jump targets' predecessors and must not be folded into
    /// later ops, or a jump would land in the middle of a rewritten sequence.
    barrier: usize,
}

type PResult = Result<(), ExprError>;

impl<F: Fn(&str) -> Option<usize>> Parser<F> {
    fn new(src: &str, lookup: F) -> Result<Self, ExprError> {
        let mut p = Parser {
            chars: src.chars().collect(),
            pos: 0,
            tok: Token {
                kind: Kind::Eof,
                col: 1,
                end: 0,
            },
            lookup,
            code: Vec::new(),
            height: 0,
            max_height: 0,
            depth: 0,
            barrier: 0,
        };
        p.tok = p.lex()?;
        Ok(p)
    }

    // ---- lexer ----

    fn lex(&mut self) -> Result<Token, ExprError> {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
        let start = self.pos;
        let col = start + 1;
        let Some(&c) = self.chars.get(start) else {
            return Ok(Token {
                kind: Kind::Eof,
                col,
                end: start,
            });
        };
        let next = self.chars.get(start + 1).copied();
        let (kind, len) = match c {
            '(' => (Kind::LParen, 1),
            ')' => (Kind::RParen, 1),
            ',' => (Kind::Comma, 1),
            '+' => (Kind::Plus, 1),
            '-' => (Kind::Minus, 1),
            '*' => (Kind::Star, 1),
            '/' => (Kind::Slash, 1),
            '<' if next == Some('=') => (Kind::Cmp(Bin::Le), 2),
            '<' => (Kind::Cmp(Bin::Lt), 1),
            '>' if next == Some('=') => (Kind::Cmp(Bin::Ge), 2),
            '>' => (Kind::Cmp(Bin::Gt), 1),
            '=' if next == Some('=') => (Kind::Cmp(Bin::Eq), 2),
            '=' => return Err(syntax(col, "expected `==`, found `=`".to_string())),
            '!' if next == Some('=') => (Kind::Cmp(Bin::Ne), 2),
            '!' => (Kind::Not, 1),
            '&' if next == Some('&') => (Kind::And, 2),
            '&' => return Err(syntax(col, "expected `&&`, found `&`".to_string())),
            '|' if next == Some('|') => (Kind::Or, 2),
            '|' => return Err(syntax(col, "expected `||`, found `|`".to_string())),
            '0'..='9' => return self.lex_number(start),
            c if c.is_ascii_alphabetic() || c == '_' => return Ok(self.lex_word(start)),
            _ => (Kind::Other, 1),
        };
        self.pos = start + len;
        Ok(Token {
            kind,
            col,
            end: self.pos,
        })
    }

    /// Reads digits starting at `*i`, skipping underscores that sit between two digits.
    /// Returns whether at least one digit was read.
    fn lex_digits(&self, i: &mut usize, text: &mut String) -> bool {
        let mut any = false;
        loop {
            match self.chars.get(*i) {
                Some(&d) if d.is_ascii_digit() => {
                    text.push(d);
                    any = true;
                    *i += 1;
                }
                Some('_') if any && self.chars.get(*i + 1).is_some_and(|c| c.is_ascii_digit()) => {
                    *i += 1;
                }
                _ => return any,
            }
        }
    }

    fn lex_number(&mut self, start: usize) -> Result<Token, ExprError> {
        let mut text = String::new();
        let mut i = start;
        let mut ok = self.lex_digits(&mut i, &mut text);
        if self.chars.get(i) == Some(&'.') {
            text.push('.');
            i += 1;
            ok &= self.lex_digits(&mut i, &mut text);
        }
        if matches!(self.chars.get(i), Some('e' | 'E')) {
            text.push('e');
            i += 1;
            if let Some(&s @ ('+' | '-')) = self.chars.get(i) {
                text.push(s);
                i += 1;
            }
            ok &= self.lex_digits(&mut i, &mut text);
        }
        let glued = |c: &char| c.is_ascii_alphanumeric() || *c == '_' || *c == '.';
        let value = text.parse::<f64>().ok();
        if !ok || self.chars.get(i).is_some_and(glued) || value.is_none() {
            // Swallow the whole glued run so the message shows what the user wrote.
            let mut j = i;
            while self.chars.get(j).is_some_and(glued) {
                j += 1;
            }
            let lit: String = self.chars[start..j].iter().collect();
            return Err(syntax(
                start + 1,
                format!("invalid number `{lit}`; expected a number like 3, 0.5, 1e3 or 1_000"),
            ));
        }
        let lit: String = self.chars[start..i].iter().collect();
        let value = value.unwrap_or(0.0);
        if !value.is_finite() {
            return Err(syntax(
                start + 1,
                format!("number `{lit}` is too large; expected a finite number"),
            ));
        }
        self.pos = i;
        Ok(Token {
            kind: Kind::Num(value),
            col: start + 1,
            end: i,
        })
    }

    fn lex_word(&mut self, start: usize) -> Token {
        let mut i = start;
        while self
            .chars
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            i += 1;
        }
        let word: String = self.chars[start..i].iter().collect();
        let kind = match word.as_str() {
            "and" => Kind::And,
            "or" => Kind::Or,
            "not" => Kind::Not,
            "true" => Kind::True,
            "false" => Kind::False,
            _ => Kind::Ident(word),
        };
        self.pos = i;
        Token {
            kind,
            col: start + 1,
            end: i,
        }
    }

    fn advance(&mut self) -> Result<Token, ExprError> {
        let next = self.lex()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    /// Peeks at the raw source after the current token, so an identifier can be classified
    /// (call or feature) without lexing further and reporting a later error first.
    fn next_char_is(&self, want: char) -> bool {
        self.chars[self.pos.min(self.chars.len())..]
            .iter()
            .find(|c| !c.is_whitespace())
            == Some(&want)
    }

    fn describe(&self, tok: &Token) -> String {
        if tok.kind == Kind::Eof {
            return "end of input".to_string();
        }
        let text: String = self.chars[tok.col - 1..tok.end].iter().collect();
        format!("`{text}`")
    }

    // ---- code generation ----

    fn emit(&mut self, op: Op) -> PResult {
        match op {
            Op::Const(_) | Op::Load(_) | Op::Compare(..) => {
                self.height += 1;
                if self.height > MAX_STACK {
                    return Err(syntax(self.tok.col, "expression nested too deeply".to_string()));
                }
                self.max_height = self.max_height.max(self.height);
            }
            Op::Binary(_) | Op::AndJump(_) | Op::OrJump(_) => self.height -= 1,
            Op::Unary(_) => {}
        }
        // A compound operand never ends in `Const` unless it folded down to one, so a
        // trailing `Const` past the barrier is exactly the whole operand.
        let n = self.code.len();
        match op {
            Op::Unary(u) if n > self.barrier => match self.code[n - 1] {
                Op::Const(x) => {
                    self.code[n - 1] = Op::Const(u.apply(x));
                    return Ok(());
                }
                // A comparison is already 1.0 or 0.0.
                Op::Compare(..) if u == Un::Truthy => return Ok(()),
                _ => {}
            },
            Op::Binary(b) if n >= self.barrier + 2 => match self.code[n - 2..] {
                [Op::Const(x), Op::Const(y)] => {
                    self.code.truncate(n - 2);
                    self.code.push(Op::Const(b.apply(x, y)));
                    return Ok(());
                }
                [Op::Load(i), Op::Const(c)] if b.compares() => {
                    if let Ok(i) = u32::try_from(i) {
                        self.code.truncate(n - 2);
                        self.code.push(Op::Compare(i, b, c));
                        return Ok(());
                    }
                }
                _ => {}
            },
            _ => {}
        }
        self.code.push(op);
        Ok(())
    }

    /// Closes an `&&`/`||` whose jump sits at `jump` and whose left operand began at `start`.
    fn finish_logic(&mut self, start: usize, jump: usize) -> PResult {
        self.emit(Op::Unary(Un::Truthy))?;
        let folded = match self.code[start..] {
            [Op::Const(a), Op::AndJump(_), Op::Const(b)] => Some(if truthy(a) { b } else { 0.0 }),
            [Op::Const(a), Op::OrJump(_), Op::Const(b)] => Some(if truthy(a) { 1.0 } else { b }),
            _ => None,
        };
        if let Some(v) = folded {
            self.code.truncate(start);
            self.code.push(Op::Const(v));
            return Ok(());
        }
        let end = self.code.len();
        if let Op::AndJump(t) | Op::OrJump(t) = &mut self.code[jump] {
            *t = end;
        }
        self.barrier = end;
        Ok(())
    }

    fn enter(&mut self, col: usize) -> PResult {
        if self.depth >= MAX_DEPTH {
            return Err(syntax(
                col,
                format!("expression nested too deeply (limit is {MAX_DEPTH} levels)"),
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    // ---- grammar ----

    fn parse_expr(&mut self) -> PResult {
        self.parse_or()
    }

    fn parse_or(&mut self) -> PResult {
        let start = self.code.len();
        self.parse_and()?;
        while self.tok.kind == Kind::Or {
            self.advance()?;
            let jump = self.code.len();
            self.emit(Op::OrJump(0))?;
            self.parse_and()?;
            self.finish_logic(start, jump)?;
        }
        Ok(())
    }

    fn parse_and(&mut self) -> PResult {
        let start = self.code.len();
        self.parse_not()?;
        while self.tok.kind == Kind::And {
            self.advance()?;
            let jump = self.code.len();
            self.emit(Op::AndJump(0))?;
            self.parse_not()?;
            self.finish_logic(start, jump)?;
        }
        Ok(())
    }

    fn parse_not(&mut self) -> PResult {
        if self.tok.kind != Kind::Not {
            return self.parse_cmp();
        }
        let bang = self.advance()?;
        self.enter(bang.col)?;
        self.parse_not()?;
        self.leave();
        self.emit(Op::Unary(Un::Not))
    }

    fn parse_cmp(&mut self) -> PResult {
        self.parse_sum()?;
        if let Kind::Cmp(op) = self.tok.kind {
            self.advance()?;
            self.parse_sum()?;
            self.emit(Op::Binary(op))?;
            if let Kind::Cmp(_) = self.tok.kind {
                let found = self.describe(&self.tok);
                return Err(syntax(
                    self.tok.col,
                    format!("comparisons cannot be chained; expected `&&` or `||` before {found}"),
                ));
            }
        }
        Ok(())
    }

    fn parse_sum(&mut self) -> PResult {
        self.parse_term()?;
        loop {
            let op = match self.tok.kind {
                Kind::Plus => Bin::Add,
                Kind::Minus => Bin::Sub,
                _ => return Ok(()),
            };
            self.advance()?;
            self.parse_term()?;
            self.emit(Op::Binary(op))?;
        }
    }

    fn parse_term(&mut self) -> PResult {
        self.parse_unary()?;
        loop {
            let op = match self.tok.kind {
                Kind::Star => Bin::Mul,
                Kind::Slash => Bin::Div,
                _ => return Ok(()),
            };
            self.advance()?;
            self.parse_unary()?;
            self.emit(Op::Binary(op))?;
        }
    }

    fn parse_unary(&mut self) -> PResult {
        if self.tok.kind != Kind::Minus {
            return self.parse_atom();
        }
        let minus = self.advance()?;
        self.enter(minus.col)?;
        self.parse_unary()?;
        self.leave();
        self.emit(Op::Unary(Un::Neg))
    }

    fn parse_atom(&mut self) -> PResult {
        // Validate before advancing: advancing lexes the following token, and its lex error
        // must not pre-empt an error at this one.
        match self.tok.kind {
            Kind::Num(v) => {
                self.advance()?;
                self.emit(Op::Const(v))
            }
            Kind::True | Kind::False => {
                let v = flag(self.tok.kind == Kind::True);
                self.advance()?;
                self.emit(Op::Const(v))
            }
            Kind::LParen => {
                let open = self.advance()?;
                self.enter(open.col)?;
                self.parse_expr()?;
                if self.tok.kind != Kind::RParen {
                    let found = self.describe(&self.tok);
                    return Err(syntax(
                        self.tok.col,
                        format!("expected `)` to close `(` at column {}, found {found}", open.col),
                    ));
                }
                self.advance()?;
                self.leave();
                Ok(())
            }
            Kind::Ident(ref name) => {
                let name = name.clone();
                let col = self.tok.col;
                if self.next_char_is('(') {
                    return self.parse_call(name, col);
                }
                let Some(index) = (self.lookup)(&name) else {
                    return Err(ExprError::UnknownFeature { col, name });
                };
                self.advance()?;
                self.emit(Op::Load(index))
            }
            _ => {
                let found = self.describe(&self.tok);
                Err(syntax(
                    self.tok.col,
                    format!("expected a feature name, number or `(`, found {found}"),
                ))
            }
        }
    }

    fn parse_call(&mut self, name: String, col: usize) -> PResult {
        let (arity, op) = match name.as_str() {
            "min" => (2, Op::Binary(Bin::Min)),
            "max" => (2, Op::Binary(Bin::Max)),
            "abs" => (1, Op::Unary(Un::Abs)),
            _ => {
                return Err(syntax(
                    col,
                    format!("unknown function `{name}`; expected `min`, `max` or `abs`"),
                ))
            }
        };
        self.advance()?; // name
        self.enter(col)?;
        self.advance()?; // `(`
        let mut count = 0usize;
        if self.tok.kind != Kind::RParen {
            loop {
                let arg_start = self.code.len();
                self.parse_expr()?;
                count += 1;
                if count > arity {
                    // Discard surplus arguments so a huge argument list cannot grow the
                    // stack; they are only parsed to report an accurate count.
                    self.code.truncate(arg_start);
                    self.height -= 1;
                }
                if self.tok.kind != Kind::Comma {
                    break;
                }
                self.advance()?;
            }
        }
        if self.tok.kind != Kind::RParen {
            let found = self.describe(&self.tok);
            return Err(syntax(
                self.tok.col,
                format!("expected `,` or `)` in call to `{name}`, found {found}"),
            ));
        }
        if count != arity {
            let plural = if arity == 1 { "" } else { "s" };
            return Err(syntax(
                col,
                format!("function `{name}` takes {arity} argument{plural}, found {count}"),
            ));
        }
        self.advance()?;
        self.leave();
        self.emit(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile_with(src: &str, names: &[&str]) -> Result<Expr, ExprError> {
        Expr::compile(src, |n| names.iter().position(|&k| k == n))
    }

    #[track_caller]
    fn check(src: &str, values: &[(&str, f64)], expect: f64) {
        let names: Vec<&str> = values.iter().map(|(n, _)| *n).collect();
        let vals: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
        let e = compile_with(src, &names).unwrap_or_else(|err| panic!("{src:?}: {err}"));
        let got = e.eval(&vals);
        assert!(
            got == expect || (got.is_nan() && expect.is_nan()),
            "{src:?}: got {got}, expected {expect}"
        );
        assert_eq!(e.matches(&vals), truthy(expect), "{src:?}: matches");
    }

    #[track_caller]
    fn check_err(src: &str, expected_col: usize, expected_substring: &str) {
        let err = compile_with(src, &["a", "b", "c"]).expect_err(src);
        let (col, text) = match &err {
            ExprError::Syntax { col, .. } | ExprError::UnknownFeature { col, .. } => (*col, err.to_string()),
        };
        assert_eq!(col, expected_col, "{src:?}: {text}");
        assert!(
            text.contains(expected_substring),
            "{src:?}: {text:?} lacks {expected_substring:?}"
        );
    }

    const NONE: &[(&str, f64)] = &[];

    #[test]
    fn arithmetic_and_precedence() {
        check("1 + 2 * 3 == 7", NONE, 1.0);
        check("1 + 2 * 3", NONE, 7.0);
        check("(1 + 2) * 3", NONE, 9.0);
        check("10 - 4 - 3", NONE, 3.0);
        check("8 / 4 / 2", NONE, 1.0);
        check("2 * 3 + 4 * 5", NONE, 26.0);
        check("1 + 2 < 4", NONE, 1.0);
        check("a * 2 + b", &[("a", 3.0), ("b", 1.0)], 7.0);
        check("a - b * c", &[("a", 10.0), ("b", 2.0), ("c", 3.0)], 4.0);
    }

    #[test]
    fn unary_minus() {
        check("-3", NONE, -3.0);
        check("--3", NONE, 3.0);
        check("- a", &[("a", 2.0)], -2.0);
        check("1 - -1", NONE, 2.0);
        check("-a * 2", &[("a", 2.0)], -4.0);
        check("2 * -a", &[("a", 2.0)], -4.0);
        check("-(1 + 2)", NONE, -3.0);
    }

    #[test]
    fn comparisons() {
        check("1 < 2", NONE, 1.0);
        check("2 < 1", NONE, 0.0);
        check("2 <= 2", NONE, 1.0);
        check("3 > 2", NONE, 1.0);
        check("2 >= 3", NONE, 0.0);
        check("a == 2", &[("a", 2.0)], 1.0);
        check("a != 2", &[("a", 2.0)], 0.0);
        check("a < 1", &[("a", f64::NAN)], 0.0);
        check("a != a", &[("a", f64::NAN)], 1.0);
    }

    #[test]
    fn logic() {
        let v = &[("a", 2.0), ("b", 1.0), ("c", 0.0)];
        check("a > 1 && b < 2 || c", v, 1.0);
        check("a > 5 && b < 2 || c", v, 0.0);
        check("a > 5 && b < 2 || c", &[("a", 2.0), ("b", 1.0), ("c", 7.0)], 1.0);
        check("c || a > 5 && b < 2", v, 0.0);
        check("a and b", v, 1.0);
        check("a and c", v, 0.0);
        check("c or b", v, 1.0);
        check("not c", v, 1.0);
        check("not not a", v, 1.0);
        check("!a", v, 0.0);
        check("!c", v, 1.0);
        check("!!a", v, 1.0);
        check("!a > 1", v, 0.0); // !(a > 1)
        check("!a > 5", v, 1.0);
        check("a && b", v, 1.0); // normalised, not 1.0 from `b` by accident
        check("a && 5", v, 1.0);
        check("c || 0.5", v, 1.0);
        check("a || c", v, 1.0);
        check("true && !false", NONE, 1.0);
        check("false or false", NONE, 0.0);
        check("true", NONE, 1.0);
        check("false", NONE, 0.0);
        check("a && b && a && b", v, 1.0);
        check("c || c || c || b", v, 1.0);
        check("!(a > 1 && b > 5)", v, 1.0);
    }

    #[test]
    fn nan_is_falsy() {
        let v = &[("n", f64::NAN), ("one", 1.0)];
        check("n", v, f64::NAN);
        check("n && one", v, 0.0);
        check("one && n", v, 0.0);
        check("n || one", v, 1.0);
        check("one || n", v, 1.0);
        check("!n", v, 1.0);
    }

    #[test]
    fn short_circuit_skips_right_operand() {
        let e = compile_with("a || b * 2 > 1", &["a", "b"]).unwrap();
        let jump = e.code.iter().find_map(|op| match op {
            Op::OrJump(t) => Some(*t),
            _ => None,
        });
        assert_eq!(jump, Some(e.code.len()));
        let e = compile_with("a && b", &["a", "b"]).unwrap();
        assert!(matches!(e.code[1], Op::AndJump(t) if t == e.code.len()));
        assert_eq!(e.eval(&[0.0, 1.0]), 0.0);
        assert_eq!(e.eval(&[3.0, 0.5]), 1.0);
    }

    #[test]
    fn functions() {
        check("min(3, 4)", NONE, 3.0);
        check("max(3, 4)", NONE, 4.0);
        check("abs(-2.5)", NONE, 2.5);
        check("max(a, b) * 2", &[("a", 1.0), ("b", 5.0)], 10.0);
        check("min(a + 1, abs(b))", &[("a", 1.0), ("b", -5.0)], 2.0);
        check("abs(a > 1 || b)", &[("a", 3.0), ("b", 0.0)], 1.0);
        check("max ( 1 , 2 )", NONE, 2.0);
    }

    #[test]
    fn feature_named_like_a_function() {
        check("min + 1", &[("min", 2.0)], 3.0);
    }

    #[test]
    fn division_by_zero_is_zero() {
        check("1 / 0", NONE, 0.0);
        check("0 / 0", NONE, 0.0);
        check("a / b", &[("a", 5.0), ("b", 0.0)], 0.0);
        check("a / b", &[("a", 5.0), ("b", 2.0)], 2.5);
        check("a / (b - b) > 0", &[("a", 5.0), ("b", 2.0)], 0.0);
    }

    #[test]
    fn numbers() {
        check("1_000", NONE, 1000.0);
        check("1_000_000 == 1e6", NONE, 1.0);
        check("0.5", NONE, 0.5);
        check("1e3", NONE, 1000.0);
        check("1E3", NONE, 1000.0);
        check("2.5e-1", NONE, 0.25);
        check("1e+2", NONE, 100.0);
        check("1_0.2_5", NONE, 10.25);
        check("007", NONE, 7.0);
    }

    #[test]
    fn whitespace_and_out_of_range() {
        check("  a\t+\n1 ", &[("a", 1.0)], 2.0);
        let e = Expr::compile("x + 1", |_| Some(99)).unwrap();
        assert_eq!(e.eval(&[]), 1.0);
        assert_eq!(e.eval(&[1.0, 2.0]), 1.0);
    }

    #[test]
    fn long_chains_do_not_recurse() {
        let src = vec!["a"; 20_000].join(" + ");
        check(&src, &[("a", 1.0)], 20_000.0);
        let src = vec!["a"; 5_000].join(" || ");
        check(&src, &[("a", 0.0)], 0.0);
        let src = vec!["a"; 5_000].join(" && ");
        check(&src, &[("a", 2.0)], 1.0);
    }

    #[test]
    fn depth_cap() {
        let ok = format!("{}1{}", "(".repeat(64), ")".repeat(64));
        check(&ok, NONE, 1.0);
        let deep = format!("{}1{}", "(".repeat(65), ")".repeat(65));
        check_err(&deep, 65, "nested too deeply");
        check_err(&format!("{}a", "-".repeat(100)), 65, "nested too deeply");
        check_err(&format!("{}a", "!".repeat(100)), 65, "nested too deeply");
        check_err(&"abs(".repeat(100), 257, "nested too deeply");
        let huge = "(".repeat(100_000);
        check_err(&huge, 65, "nested too deeply");
    }

    #[test]
    fn deep_right_nesting_uses_big_stack() {
        // Each level costs two nesting steps (`(` and `max(`) and keeps four pending left
        // operands on the stack, so 31 levels stay under the depth cap but need >32 slots.
        let mut src = String::from("a");
        for _ in 0..31 {
            src = format!("a || a && a < a + a * (max(a, {src})) ");
        }
        let e = compile_with(&src, &["a"]).unwrap();
        assert!(e.max_stack > 32, "max_stack {}", e.max_stack);
        assert!(e.max_stack <= MAX_STACK);
        assert_eq!(e.eval(&[0.0]), 0.0);
        assert_eq!(e.eval(&[1.0]), 1.0);

        let right = format!("{}a{}", "1 + (".repeat(64), ")".repeat(64));
        check(&right, &[("a", 1.0)], 65.0);
    }

    #[test]
    fn constant_folding() {
        let e = compile_with("1 + 2 * 3 == 7 && !false || abs(-1) > max(2, 3)", &[]).unwrap();
        assert_eq!(&*e.code, &[Op::Const(1.0)]);
        let e = compile_with("a * (2 + 3)", &["a"]).unwrap();
        assert_eq!(e.code.len(), 3);
        // A partially constant `||` must not be folded through its jump target.
        let e = compile_with("(a || 1) + 2", &["a"]).unwrap();
        assert_eq!(e.eval(&[0.0]), 3.0);
        assert_eq!(e.eval(&[5.0]), 3.0);
        let e = compile_with("(a && 0) * 4 + 1", &["a"]).unwrap();
        assert_eq!(e.eval(&[5.0]), 1.0);
    }

    #[test]
    fn a_comparison_with_a_number_is_one_step() {
        let e = compile_with("a >= 4", &["a"]).unwrap();
        assert!(matches!(*e.code, [Op::Compare(0, Bin::Ge, c)] if c == 4.0));
        assert_eq!(e.features(), vec![0]);
        // `&&` keeps no `Truthy` after a comparison: it is already 1.0 or 0.0.
        let e = compile_with("a >= 2 && b == 1", &["a", "b"]).unwrap();
        assert_eq!(e.code.len(), 3);
        assert!(e.matches(&[2.0, 1.0]) && !e.matches(&[2.0, 0.0]) && !e.matches(&[1.0, 1.0]));
        // NaN and out-of-range reads behave as through the interpreter.
        let e = Expr::compile("x != 1", |_| Some(7)).unwrap();
        assert!(e.matches(&[]), "out of range reads 0");
        let v = &[("n", f64::NAN)];
        check("n > 1", v, 0.0);
        check("n != 1", v, 1.0);
        check("!(n < 1)", v, 1.0);
    }

    /// Every expression evaluates as it does with each feature written `(x + 0)`, which
    /// is the same number but keeps the comparison out of the fused step.
    #[test]
    fn fused_comparisons_agree_with_the_interpreter() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let names = ["a", "b", "c"];
        let ops = ["<", "<=", ">", ">=", "==", "!="];
        let numbers = [0.0, 1.0, 2.5, -1.0];
        let atom = |rng: &mut rand_chacha::ChaCha8Rng, bare: bool| {
            let f = names[rng.random_range(0..3)];
            let f = if bare { f.to_string() } else { format!("({f} + 0)") };
            format!(
                "{f} {} {}",
                ops[rng.random_range(0..6)],
                numbers[rng.random_range(0..4)]
            )
        };
        let specials = [0.0, -0.0, 1.0, 2.5, -1.0, 3.0, f64::NAN, f64::INFINITY];
        for _ in 0..500 {
            let terms = rng.random_range(1..5);
            let seed: u64 = rng.random();
            let build = |bare: bool| {
                let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                let mut src = atom(&mut r, bare);
                for _ in 1..terms {
                    let joint = ["&&", "||"][r.random_range(0..2)];
                    let negate = if r.random_bool(0.3) { "!" } else { "" };
                    src = format!("{negate}({src}) {joint} {}", atom(&mut r, bare));
                }
                src
            };
            let (fused, unfused) = (build(true), build(false));
            let (ef, ep) = (
                compile_with(&fused, &names).unwrap(),
                compile_with(&unfused, &names).unwrap(),
            );
            assert!(ef.code.iter().any(|op| matches!(op, Op::Compare(..))), "{fused}");
            assert!(!ep.code.iter().any(|op| matches!(op, Op::Compare(..))), "{unfused}");
            for _ in 0..8 {
                let vals: Vec<f64> = (0..3).map(|_| specials[rng.random_range(0..specials.len())]).collect();
                let (f, p) = (ef.eval(&vals), ep.eval(&vals));
                assert!(f == p || (f.is_nan() && p.is_nan()), "{fused} at {vals:?}: {f} vs {p}");
                assert_eq!(ef.matches(&vals), ep.matches(&vals), "{fused} at {vals:?}");
            }
        }
    }

    #[test]
    fn features_and_source() {
        let src = "c > 1 && a < 2 || c + a > b";
        let e = compile_with(src, &["a", "b", "c", "d"]).unwrap();
        assert_eq!(e.source(), src);
        assert_eq!(e.features(), vec![0, 1, 2]);
        assert_eq!(compile_with("1 + 2", &[]).unwrap().features(), Vec::<usize>::new());
        assert_eq!(compile_with("  d ", &["a", "b", "c", "d"]).unwrap().source(), "  d ");
    }

    #[test]
    fn errors() {
        check_err("", 1, "expected a feature name, number or `(`, found end of input");
        check_err("   ", 4, "found end of input");
        check_err("a + zz", 5, "unknown feature `zz`");
        check_err("zz", 1, "unknown feature");
        check_err("a b", 3, "expected an operator or end of input, found `b`");
        check_err("a + 1 2", 7, "found `2`");
        check_err("(a + 1", 7, "expected `)` to close `(` at column 1");
        check_err("a + 1)", 6, "unmatched `)`");
        check_err("()", 2, "expected a feature name, number or `(`, found `)`");
        check_err("a < b < c", 7, "chained");
        check_err("a == b != c", 8, "chained");
        check_err("a = 1", 3, "expected `==`, found `=`");
        check_err("a & b", 3, "expected `&&`, found `&`");
        check_err("a | b", 3, "expected `||`, found `|`");
        check_err("a # b", 3, "found `#`");
        check_err("a + ü", 5, "found `ü`");
        check_err("ü + a", 1, "found `ü`");
        check_err("a +", 4, "found end of input");
        check_err("a and or b", 7, "found `or`");
        check_err("1 + !a", 5, "found `!`");
        check_err("true(1)", 5, "expected an operator");
    }

    #[test]
    fn function_errors() {
        check_err("min(1)", 1, "function `min` takes 2 arguments, found 1");
        check_err("max(1, 2, 3)", 1, "function `max` takes 2 arguments, found 3");
        check_err("abs()", 1, "function `abs` takes 1 argument, found 0");
        check_err("a + abs(1, 2)", 5, "function `abs` takes 1 argument, found 2");
        check_err("pow(2, 3)", 1, "unknown function `pow`");
        check_err("min(1 2)", 7, "expected `,` or `)` in call to `min`");
        check_err("min(1,", 7, "found end of input");
        check_err("min(1, 2,)", 10, "found `)`");
        let many = format!("max({})", vec!["1"; 10_000].join(","));
        check_err(&many, 1, "found 10000");
    }

    #[test]
    fn number_errors() {
        check_err("1_", 1, "invalid number `1_`");
        check_err("1__0", 1, "invalid number");
        check_err("1.", 1, "invalid number `1.`");
        check_err("1e", 1, "invalid number `1e`");
        check_err("1e+", 1, "invalid number");
        check_err("2x + 1", 1, "invalid number `2x`");
        check_err("1.2.3", 1, "invalid number `1.2.3`");
        check_err("a + 1e999", 5, "too large");
        check_err(".5", 1, "found `.`");
    }

    #[test]
    fn earliest_error_wins() {
        check_err(") =", 1, "found `)`");
        check_err("zz = 1", 1, "unknown feature `zz`");
        check_err("a = )", 3, "expected `==`");
    }

    #[test]
    fn error_display() {
        let err = compile_with("a + q", &["a"]).unwrap_err();
        assert_eq!(err.to_string(), "column 5: unknown feature `q`");
        assert_eq!(
            err,
            ExprError::UnknownFeature {
                col: 5,
                name: "q".into()
            }
        );
    }
}
