//! A pickle scanned without running it: every opcode is decoded and its effect on the unpickler's
//! stack and memo simulated just far enough to know what each import names (`GLOBAL`, `INST`, and
//! `STACK_GLOBAL` whose strings may come from the memo, from any earlier point), what `REDUCE`,
//! `OBJ`, `NEWOBJ` and `BUILD` call, and the tensor shapes `torch.save` passes to
//! `_rebuild_tensor_v2`. The simulation is exact for the values it tracks (strings, ints, globals,
//! small tuples) and opaque for the rest; anything it cannot follow is a reason, never a pass.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use super::lists::{Judgement, judge};
use super::{MAX_LISTED, PickleReport, Verdict, clip, push_bounded};

/// Longest tuple whose items are tracked (a tensor's shape or `_rebuild_tensor_v2`'s arguments).
const MAX_TUPLE: usize = 32;
/// Longest string tracked as a value (a module or attribute name); longer ones are opaque.
const MAX_NAME: usize = 1024;
/// Pickles one file may hold one after another (legacy `torch.save` writes five).
const MAX_PICKLES: usize = 16;
/// How deep pickles in byte strings of a pickle are scanned too.
const MAX_NESTING: usize = 2;

#[derive(Clone, Debug)]
enum Val {
    Str(Rc<str>),
    Bytes,
    Int(i64),
    Global(Rc<str>),
    Tuple(Rc<[Val]>),
    Other,
}

/// What one scan found: imports, reasons by severity, and parameters of rebuilt tensors.
#[derive(Default)]
pub struct Scan {
    imports: BTreeSet<String>,
    /// Reasons and the verdict each calls for.
    reasons: Vec<(Verdict, String)>,
    pub parameters: u64,
    pub tensors: u64,
    /// Bytes of the input that were pickles (the rest follows the last STOP).
    pub consumed: usize,
    truncated: bool,
}

impl Scan {
    fn reason(&mut self, verdict: Verdict, text: String) {
        if self.reasons.len() < MAX_LISTED && !self.reasons.iter().any(|(_, t)| *t == text) {
            self.reasons.push((verdict, text));
        }
    }

    fn import(&mut self, module: &str, name: &str) {
        let full = format!("{module}.{name}");
        match judge(module, name) {
            Judgement::Allowed => {}
            Judgement::Denied => self.reason(Verdict::Unsafe, format!("imports {} (deny-list)", clip(&full))),
            Judgement::Unlisted => {
                self.reason(Verdict::Suspicious, format!("imports {} (not on the allow-list)", clip(&full)))
            }
        }
        if self.imports.len() < 4 * MAX_LISTED {
            self.imports.insert(clip(&full));
        }
    }

    /// A scan of what could not be read: "unknown" with the reason.
    pub fn unread(reason: String) -> Scan {
        let mut scan = Scan::default();
        scan.reason(Verdict::Unknown, reason);
        scan
    }

    /// The scan stopped at the end of the bytes it had (more bytes might complete it).
    pub fn ran_past_end(&self) -> bool {
        self.truncated
    }

    /// Merges another scan (a zip's other pickle member).
    pub fn merge(&mut self, other: Scan) {
        self.imports.extend(other.imports);
        for (v, t) in other.reasons {
            self.reason(v, t);
        }
        self.parameters = self.parameters.saturating_add(other.parameters);
        self.tensors = self.tensors.saturating_add(other.tensors);
    }

    /// The verdict: unsafe beats unknown beats suspicious beats safe.
    pub fn report(&self) -> PickleReport {
        let verdict = self.reasons.iter().map(|(v, _)| *v).max().unwrap_or(Verdict::Safe);
        let mut reasons = Vec::new();
        let mut ordered: Vec<_> = self.reasons.iter().collect();
        ordered.sort_by_key(|r| std::cmp::Reverse(r.0));
        for (_, t) in ordered {
            push_bounded(&mut reasons, t.clone());
        }
        let mut imports = Vec::new();
        for i in &self.imports {
            push_bounded(&mut imports, i.clone());
        }
        PickleReport { verdict, imports, reasons }
    }
}

/// Scans the pickles `bytes` holds one after another. `complete`: the bytes are the whole file
/// (else the scan's end at the end of `bytes` is a truncation, "unknown").
pub fn scan(bytes: &[u8], complete: bool) -> Scan {
    let mut scan = Scan::default();
    scan_into(&mut scan, bytes, complete, 0);
    scan
}

fn scan_into(scan: &mut Scan, bytes: &[u8], complete: bool, depth: usize) {
    let mut at = 0;
    for n in 0..MAX_PICKLES {
        if at >= bytes.len() {
            break;
        }
        let mut machine = Machine { bytes, at, stack: Vec::new(), marks: Vec::new(), memo: BTreeMap::new(), depth };
        match machine.run(scan) {
            Ok(()) => at = machine.at,
            Err(Stop::Truncated) if !complete => {
                scan.truncated = true;
                scan.reason(Verdict::Unknown, format!("the pickle goes on past the {} bytes read", bytes.len()));
                break;
            }
            // Legacy `torch.save` writes raw tensor bytes after its pickles: what follows a
            // complete pickle and is not one ends the scan (as picklescan does).
            Err(Stop::NotAPickle) if n > 0 => break,
            Err(Stop::Truncated) => {
                scan.reason(Verdict::Unknown, format!("truncated pickle: the file ends at byte {}", bytes.len()));
                break;
            }
            Err(Stop::NotAPickle) => {
                scan.reason(Verdict::Unknown, "not a pickle: the first opcode is not one".to_owned());
                break;
            }
            Err(Stop::Malformed(at, what)) => {
                scan.reason(Verdict::Unknown, format!("malformed pickle at byte {at}: {what}"));
                break;
            }
        }
        scan.consumed = at;
    }
}

enum Stop {
    Truncated,
    /// The first opcode is not a pickle opcode.
    NotAPickle,
    Malformed(usize, String),
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Val>,
    /// Stack lengths at each MARK (the unpickler's metastack).
    marks: Vec<usize>,
    memo: BTreeMap<u64, Val>,
    depth: usize,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Stop> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(Stop::Truncated)?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<u64, Stop> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// A length argument, which must fit in what is left.
    fn len(&mut self, n: usize) -> Result<usize, Stop> {
        let len = self.uint(n)?;
        usize::try_from(len).map_err(|_| Stop::Truncated)
    }

    /// A newline-terminated argument (protocol 0).
    fn line(&mut self) -> Result<&[u8], Stop> {
        let rest = &self.bytes[self.at..];
        let end = rest.iter().position(|b| *b == b'\n').ok_or(Stop::Truncated)?;
        self.at += end + 1;
        Ok(&rest[..end])
    }

    fn malformed(&self, what: impl Into<String>) -> Stop {
        Stop::Malformed(self.at, what.into())
    }

    fn pop(&mut self) -> Result<Val, Stop> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return Err(self.malformed("pops an empty stack"));
        }
        self.stack.pop().ok_or_else(|| self.malformed("pops an empty stack"))
    }

    fn top(&self) -> Result<&Val, Stop> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return Err(self.malformed("reads an empty stack"));
        }
        self.stack.last().ok_or_else(|| self.malformed("reads an empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Val>, Stop> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn push_str(&mut self, bytes: &[u8]) {
        let v = match std::str::from_utf8(bytes) {
            Ok(s) if s.len() <= MAX_NAME => Val::Str(s.into()),
            _ => Val::Other,
        };
        self.stack.push(v);
    }

    fn push_bytes(&mut self, scan: &mut Scan, bytes: &[u8]) {
        // A pickle inside a byte string is what a nested `pickle.loads` would run: its imports
        // count when it is one whole pickle.
        if self.depth < MAX_NESTING && bytes.first() == Some(&0x80) && bytes.len() > 2 {
            let mut inner = Scan::default();
            scan_into(&mut inner, bytes, true, self.depth + 1);
            if !inner.imports.is_empty() && inner.reasons.iter().all(|(v, _)| *v != Verdict::Unknown) {
                let found: Vec<_> = inner.imports.iter().cloned().collect();
                scan.merge(inner);
                scan.reason(
                    Verdict::Suspicious,
                    format!("holds a nested pickle importing {}", clip(&found.join(", "))),
                );
            }
        }
        self.stack.push(if bytes.len() <= MAX_NAME { Val::Bytes } else { Val::Other });
    }

    fn global(&mut self, scan: &mut Scan, module: &str, name: &str) {
        scan.import(module, name);
        self.stack.push(Val::Global(format!("{module}.{name}").into()));
    }

    /// `callable(*args)`: REDUCE, NEWOBJ, OBJ, INST.
    fn call(&mut self, scan: &mut Scan, callable: &Val, args: &Val, opcode: &str) {
        match callable {
            Val::Global(name) => {
                if matches!(&**name, "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor")
                    && let Val::Tuple(args) = args
                    && let Some(Val::Tuple(shape)) = args.get(2)
                {
                    let numel = shape.iter().try_fold(1u64, |acc, d| match d {
                        Val::Int(d) if *d >= 0 => acc.checked_mul(*d as u64),
                        _ => None,
                    });
                    match numel {
                        Some(n) => {
                            scan.parameters = scan.parameters.saturating_add(n);
                            scan.tensors += 1;
                        }
                        None => scan.reason(Verdict::Suspicious, "a tensor whose shape is not a tuple of sizes".into()),
                    }
                }
            }
            _ => scan.reason(Verdict::Suspicious, format!("{opcode} calls a value that is not an imported name")),
        }
    }

    fn memo_get(&mut self, key: u64) -> Result<(), Stop> {
        let v = self.memo.get(&key).cloned().ok_or_else(|| self.malformed(format!("memo {key} was never set")))?;
        self.stack.push(v);
        Ok(())
    }

    fn memo_put(&mut self, key: u64) -> Result<(), Stop> {
        let v = self.top()?.clone();
        // Bounded like the unpickler's own memo would be by the input: one entry per opcode.
        self.memo.insert(key, v);
        Ok(())
    }

    fn run(&mut self, scan: &mut Scan) -> Result<(), Stop> {
        let start = self.at;
        loop {
            let opcode_at = self.at;
            let op = *self.take(1)?.first().ok_or(Stop::Truncated)?;
            match op {
                b'.' => {
                    self.pop()?;
                    return Ok(());
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => drop(self.pop()?),
                b'1' => drop(self.pop_mark()?),
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'F' => {
                    self.line()?;
                    self.stack.push(Val::Other);
                }
                b'I' | b'L' => {
                    let line = self.line()?;
                    let text = std::str::from_utf8(line).unwrap_or("").trim_end_matches('L');
                    let v = text.parse::<i64>().map(Val::Int).unwrap_or(Val::Other);
                    self.stack.push(v);
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.stack.push(Val::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.push(Val::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.push(Val::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a { self.len(1)? } else { self.len(4)? };
                    let raw = self.take(n)?;
                    let v = if n <= 8 && n > 0 {
                        let mut buf = [if raw[n - 1] & 0x80 != 0 { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(raw);
                        Val::Int(i64::from_le_bytes(buf))
                    } else if n == 0 {
                        Val::Int(0)
                    } else {
                        Val::Other
                    };
                    self.stack.push(v);
                }
                b'N' | 0x88 | 0x89 => self.stack.push(Val::Other),
                b'G' => {
                    self.take(8)?;
                    self.stack.push(Val::Other);
                }
                b'P' => {
                    self.line()?;
                    self.stack.push(Val::Other);
                }
                b'Q' => {
                    self.pop()?;
                    self.stack.push(Val::Other);
                }
                b'S' => {
                    let line = self.line()?.to_vec();
                    let inner = line
                        .strip_prefix(b"'")
                        .and_then(|l| l.strip_suffix(b"'"))
                        .or_else(|| line.strip_prefix(b"\"").and_then(|l| l.strip_suffix(b"\"")))
                        .ok_or_else(|| self.malformed("STRING argument is not quoted"))?;
                    self.push_str(inner);
                }
                b'V' => {
                    let line = self.line()?.to_vec();
                    self.push_str(&line);
                }
                b'T' | b'X' => {
                    let n = self.len(4)?;
                    let raw = self.take(n)?.to_vec();
                    self.push_str(&raw);
                }
                b'U' | 0x8c => {
                    let n = self.len(1)?;
                    let raw = self.take(n)?.to_vec();
                    self.push_str(&raw);
                }
                0x8d => {
                    let n = self.len(8)?;
                    let raw = self.take(n)?.to_vec();
                    self.push_str(&raw);
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'B' => self.len(4)?,
                        b'C' => self.len(1)?,
                        _ => self.len(8)?,
                    };
                    let raw = self.take(n)?.to_vec();
                    self.push_bytes(scan, &raw);
                }
                b'a' => {
                    self.pop()?;
                    self.top()?;
                }
                b'b' => {
                    // BUILD: `obj.__setstate__(state)` or a dict update; the object's class was
                    // imported (and judged) when it was made.
                    self.pop()?;
                    self.top()?;
                }
                b'c' | b'i' => {
                    let module = String::from_utf8_lossy(self.line()?).into_owned();
                    let name = String::from_utf8_lossy(self.line()?).into_owned();
                    if op == b'c' {
                        self.global(scan, &module, &name);
                    } else {
                        // INST: import, then call with the items since the MARK.
                        let args = self.pop_mark()?;
                        scan.import(&module, &name);
                        let callable = Val::Global(format!("{module}.{name}").into());
                        self.call(scan, &callable, &tuple(args), "INST");
                        self.stack.push(Val::Other);
                    }
                }
                b'd' | b'l' | b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(if op == b't' { tuple(items) } else { Val::Other });
                }
                b'}' | b']' | 0x8f => self.stack.push(Val::Other),
                b')' => self.stack.push(Val::Tuple(Rc::from(Vec::new()))),
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(tuple(items));
                }
                b'e' | b'u' | 0x90 => {
                    self.pop_mark()?;
                    self.top()?;
                }
                b's' => {
                    self.pop()?;
                    self.pop()?;
                    self.top()?;
                }
                0x91 => {
                    self.pop_mark()?;
                    self.stack.push(Val::Other);
                }
                b'g' => {
                    let key = self.line()?;
                    let key = std::str::from_utf8(key).ok().and_then(|k| k.parse().ok());
                    let key = key.ok_or_else(|| self.malformed("GET argument is not a number"))?;
                    self.memo_get(key)?;
                }
                b'h' => {
                    let key = self.uint(1)?;
                    self.memo_get(key)?;
                }
                b'j' => {
                    let key = self.uint(4)?;
                    self.memo_get(key)?;
                }
                b'p' => {
                    let key = self.line()?;
                    let key = std::str::from_utf8(key).ok().and_then(|k| k.parse().ok());
                    let key = key.ok_or_else(|| self.malformed("PUT argument is not a number"))?;
                    self.memo_put(key)?;
                }
                b'q' => {
                    let key = self.uint(1)?;
                    self.memo_put(key)?;
                }
                b'r' => {
                    let key = self.uint(4)?;
                    self.memo_put(key)?;
                }
                0x94 => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.call(scan, &callable, &args, "REDUCE");
                    self.stack.push(Val::Other);
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err(self.malformed("OBJ without a class"));
                    }
                    let class = items.remove(0);
                    self.call(scan, &class, &tuple(items), "OBJ");
                    self.stack.push(Val::Other);
                }
                0x81 => {
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.call(scan, &class, &args, "NEWOBJ");
                    self.stack.push(Val::Other);
                }
                0x92 => {
                    self.pop()?;
                    let args = self.pop()?;
                    let class = self.pop()?;
                    self.call(scan, &class, &args, "NEWOBJ_EX");
                    self.stack.push(Val::Other);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Val::Str(m), Val::Str(n)) => {
                            let (m, n) = (m.clone(), n.clone());
                            self.global(scan, &m, &n);
                        }
                        _ => {
                            scan.reason(
                                Verdict::Suspicious,
                                "STACK_GLOBAL imports a name the scan cannot resolve to strings".to_owned(),
                            );
                            self.stack.push(Val::Other);
                        }
                    }
                }
                0x82..=0x84 => {
                    let code = self.uint(1 << (op - 0x82))?;
                    scan.reason(Verdict::Suspicious, format!("imports extension code {code} (copyreg registry)"));
                    self.stack.push(Val::Other);
                }
                0x80 => {
                    let proto = self.uint(1)?;
                    if proto > 5 {
                        return Err(self.malformed(format!("unsupported protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                0x97 => self.stack.push(Val::Other),
                0x98 => {
                    self.top()?;
                }
                _ if opcode_at == start => return Err(Stop::NotAPickle),
                other => return Err(Stop::Malformed(opcode_at, format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }
}

fn tuple(items: Vec<Val>) -> Val {
    if items.len() <= MAX_TUPLE { Val::Tuple(items.into()) } else { Val::Other }
}

#[cfg(test)]
#[path = "pickle_tests.rs"]
mod tests;
