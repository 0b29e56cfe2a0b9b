//! A pickle reader that never executes anything: enough of the pickle machine (protocols 0 to
//! 5) to rebuild what `torch.save` writes — tensors, their storages, plain containers — and
//! the harmless data Lightning checkpoints carry beside them.
//!
//! Python's unpickler looks up every `GLOBAL` and calls it on `REDUCE`/`NEWOBJ`; that is how a
//! checkpoint runs `os.system`. Here a global is only a name: a known tensor rebuilder becomes
//! a [`Value::Tensor`], a known container becomes a list or dict, a name on the list of data
//! classes (numpy scalars, Lightning callbacks, omegaconf containers) becomes an opaque
//! [`Value::Object`] that is kept as data and never run, and any other name is refused with
//! that name before anything else is read. Written by hand because the Rust pickle crates
//! either reject torch's persistent ids or leave deciding what a global may be to the caller.

use std::collections::HashMap;

mod value;
use value::{long, pairs, weight};
pub use value::{StorageRef, TensorRef, Value};

/// The most values the stack, the mark stack and the memo may hold together: a state dict of
/// a few thousand tensors needs tens of thousands; this bounds memory on hostile input.
const MAX_VALUES: usize = 1 << 22;
/// What copies of values (DUP, PUT, GET) may cost together, in [`weight`] units: a copy
/// appended to itself doubles, so without a bound 200 bytes of pickle fill any memory.
const MAX_COPIED: usize = 1 << 21;
/// The deepest nesting of containers accepted.
const MAX_DEPTH: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PickleError {
    #[error(
        "the pickle calls `{0}`, which a checkpoint does not need; refusing it (nothing was run)"
    )]
    Forbidden(String),
    #[error("the pickle uses opcode 0x{0:02x} ({1}), which a checkpoint does not need")]
    Opcode(u8, &'static str),
    #[error("the pickle is malformed at byte {at}: {message}")]
    Malformed { at: usize, message: String },
    #[error(
        "the pickle is too large or too deeply nested (more than {0} values or {MAX_DEPTH} levels)"
    )]
    TooLarge(usize),
}

/// Tensor rebuilders: `REDUCE` of these makes a [`Value::Tensor`].
const TENSOR_REBUILDERS: [&str; 3] = [
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
];
/// Storage classes named in persistent ids (never called).
const STORAGE_MODULE: &str = "torch";
/// How protocol 2 writes a `bytes` object: `_codecs.encode(text, "latin1")`, evaluated here
/// (it only maps characters to bytes).
const CODECS_ENCODE: &str = "_codecs.encode";
/// Containers rebuilt as lists and dicts.
const CONTAINERS: [&str; 4] = [
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "collections.defaultdict",
];
/// Classes whose instances are plain data in checkpoints: kept as [`Value::Object`], never
/// constructed. Prefixes end with a dot.
const DATA_CLASSES: [&str; 15] = [
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "torch.torch_version.TorchVersion",
    "torch._tensor._rebuild_from_type_v2",
    "pytorch_lightning.callbacks.",
    // Lightning's hyper-parameter container (a dict subclass).
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning.pytorch.callbacks.",
    "omegaconf.",
    "typing.Any",
];

fn is_data_class(name: &str) -> bool {
    DATA_CLASSES.iter().any(|c| {
        if c.ends_with('.') {
            name.starts_with(c)
        } else {
            name == *c
        }
    })
}

/// Whether a global may appear at all: everything else is refused where it is named.
fn allowed_global(name: &str) -> bool {
    TENSOR_REBUILDERS.contains(&name)
        || CONTAINERS.contains(&name)
        || is_data_class(name)
        || name == CODECS_ENCODE
        || name == "builtins.dict"
        || name == "builtins.list"
        || (name.starts_with("torch.")
            && name.ends_with("Storage")
            && name[STORAGE_MODULE.len() + 1..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric()))
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    /// The nesting depth of each stack value (0 for scalars), in step with `stack`: bounded
    /// by MAX_DEPTH as values are built, so that dropping, copying or comparing one never
    /// recurses deeper than that.
    depths: Vec<usize>,
    marks: Vec<usize>,
    /// Memoised values and their depths.
    memo: HashMap<u64, (Value, usize)>,
    /// What copies of values (DUP, the memo) may still cost, in [`weight`] units.
    copy_budget: usize,
}

/// Reads one pickle: the value `STOP` leaves on the stack.
pub fn load(bytes: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        bytes,
        at: 0,
        stack: Vec::new(),
        depths: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copy_budget: MAX_COPIED,
    };
    m.run()
}

impl<'a> Machine<'a> {
    fn malformed(&self, message: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.at,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.malformed(format!("{n} bytes run past the end")))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(v))
    }

    fn len(&mut self, n: usize) -> Result<usize, PickleError> {
        let v = self.uint(n)?;
        usize::try_from(v).map_err(|_| self.malformed("length overflows"))
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.malformed("unterminated line"))?;
        self.at += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| self.malformed("line is not UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> Result<Value, PickleError> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| self.malformed("string is not UTF-8"))
    }

    /// A copy of `v`, charged to the copy budget.
    fn copy(&mut self, v: &Value) -> Result<Value, PickleError> {
        let cost = weight(v, self.copy_budget).ok_or(PickleError::TooLarge(MAX_VALUES))?;
        self.copy_budget -= cost;
        Ok(v.clone())
    }

    /// A copy of the top of the stack, charged to the copy budget, and its depth.
    fn copy_top(&mut self) -> Result<(Value, usize), PickleError> {
        let top = std::mem::replace(self.top()?, Value::None);
        let copy = self.copy(&top);
        *self.top()? = top;
        Ok((copy?, *self.depths.last().expect("in step with the stack")))
    }

    /// Pushes a value that holds no other (a scalar, a string, an empty container, ...).
    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.push_nested(v, 0)
    }

    /// Pushes a value nested `depth` levels deep.
    fn push_nested(&mut self, v: Value, depth: usize) -> Result<(), PickleError> {
        if self.stack.len() + self.memo.len() + self.marks.len() >= MAX_VALUES || depth > MAX_DEPTH
        {
            return Err(PickleError::TooLarge(MAX_VALUES));
        }
        self.stack.push(v);
        self.depths.push(depth);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        Ok(self.pop_nested()?.0)
    }

    /// The top value and its depth.
    fn pop_nested(&mut self) -> Result<(Value, usize), PickleError> {
        match (self.stack.pop(), self.depths.pop()) {
            (Some(Value::Mark), _) | (None, _) | (_, None) => {
                Err(self.malformed("stack underflow"))
            }
            (Some(v), Some(depth)) => Ok((v, depth)),
        }
    }

    /// Records that the top value now holds values `depth - 1` deep.
    fn deepen_top(&mut self, depth: usize) -> Result<(), PickleError> {
        let top = self
            .depths
            .last_mut()
            .ok_or_else(|| PickleError::Malformed {
                at: self.at,
                message: "empty stack".into(),
            })?;
        *top = (*top).max(depth);
        if *top > MAX_DEPTH {
            return Err(PickleError::TooLarge(MAX_VALUES));
        }
        Ok(())
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        let at = self.at;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            at,
            message: "empty stack".into(),
        })
    }

    /// The values pushed since the last MARK, which is removed, and the depth of a container
    /// holding them.
    fn pop_mark(&mut self) -> Result<(Vec<Value>, usize), PickleError> {
        let mark = self.marks.pop().ok_or_else(|| self.malformed("no MARK"))?;
        if mark > self.stack.len() {
            return Err(self.malformed("MARK beyond the stack"));
        }
        self.split_off(mark)
    }

    /// The values from stack position `at` on, and the depth of a container holding them.
    fn split_off(&mut self, at: usize) -> Result<(Vec<Value>, usize), PickleError> {
        let items = self.stack.split_off(at);
        let depth = self.depths.split_off(at).into_iter().max().unwrap_or(0) + 1;
        if items.contains(&Value::Mark) {
            return Err(self.malformed("nested MARK"));
        }
        Ok((items, depth))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        // Protocols 0 to 2 name Python 3's modules as Python 2 did.
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        let full = format!("{module}.{name}");
        if !allowed_global(&full) {
            return Err(PickleError::Forbidden(full));
        }
        self.push(Value::Global(full))
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            if self.marks.len() > MAX_DEPTH {
                return Err(PickleError::TooLarge(MAX_VALUES));
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.malformed(format!("protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => {
                    self.marks.push(self.stack.len());
                }
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                0x8f => self.push(Value::List(Vec::new()))?, // EMPTY_SET
                b't' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::Tuple(items), depth)?
                }
                b'l' => {
                    let (items, depth) = self.pop_mark()?;
                    self.push_nested(Value::List(items), depth)?
                }
                b'd' => {
                    let (items, depth) = self.pop_mark()?;
                    let dict = pairs(items).ok_or_else(|| self.malformed("odd DICT items"))?;
                    self.push_nested(Value::Dict(dict), depth)?
                }
                0x91 => {
                    let (items, depth) = self.pop_mark()?; // FROZENSET
                    self.push_nested(Value::List(items), depth)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.malformed("TUPLE underflow"));
                    }
                    let (items, depth) = self.split_off(self.stack.len() - n)?;
                    self.push_nested(Value::Tuple(items), depth)?
                }
                b'a' => {
                    let (v, depth) = self.pop_nested()?;
                    self.extend(vec![v])?;
                    self.deepen_top(depth + 1)?
                }
                b'e' | 0x90 => {
                    let (items, depth) = self.pop_mark()?; // APPENDS, ADDITEMS
                    self.extend(items)?;
                    self.deepen_top(depth)?
                }
                b's' => {
                    let (v, value_depth) = self.pop_nested()?;
                    let (k, key_depth) = self.pop_nested()?;
                    self.set_items(vec![k, v])?;
                    self.deepen_top(value_depth.max(key_depth) + 1)?
                }
                b'u' => {
                    let (items, depth) = self.pop_mark()?;
                    self.set_items(items)?;
                    self.deepen_top(depth)?
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Value::Int(v as i64))?
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Value::Int(v as i64))?
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Value::Int(v as i64))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.len(1)?
                    } else {
                        self.len(4)?
                    };
                    let b = self.take(n)?;
                    self.push(long(b))?
                }
                b'I' | b'L' => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => Value::Int(s.parse().map_err(|_| self.malformed("bad INT"))?),
                    };
                    self.push(v)?
                }
                b'F' => {
                    let line = self.line()?;
                    let v = line.parse().map_err(|_| self.malformed("bad FLOAT"))?;
                    self.push(Value::Float(v))?
                }
                b'G' => {
                    let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
                    self.push(Value::Float(f64::from_be_bytes(b)))?
                }
                b'X' => {
                    let n = self.len(4)?;
                    let v = self.utf8(n)?;
                    self.push(v)?
                }
                0x8c => {
                    let n = self.len(1)?;
                    let v = self.utf8(n)?;
                    self.push(v)?
                }
                0x8d => {
                    let n = self.len(8)?;
                    let v = self.utf8(n)?;
                    self.push(v)?
                }
                b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'T' | b'B' => self.len(4)?,
                        b'U' | b'C' => self.len(1)?,
                        _ => self.len(8)?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b))?
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'q' | b'r' | b'p' => {
                    let key = self.memo_key(op, b'q', b'r')?;
                    let copy = self.copy_top()?;
                    self.memo.insert(key, copy);
                }
                0x94 => {
                    let key = self.memo.len() as u64; // MEMOIZE
                    let copy = self.copy_top()?;
                    self.memo.insert(key, copy);
                }
                b'h' | b'j' | b'g' => {
                    let key = self.memo_key(op, b'h', b'j')?;
                    let (stored, depth) = self
                        .memo
                        .remove(&key)
                        .ok_or_else(|| self.malformed(format!("memo {key} is unset")))?;
                    let v = self.copy(&stored);
                    self.memo.insert(key, (stored, depth));
                    self.push_nested(v?, depth)?
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.global(&module, &name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.malformed("STACK_GLOBAL needs two strings")),
                    }
                }
                b'R' | 0x81 => {
                    let (args, depth) = self.pop_nested()?;
                    let callable = self.pop()?;
                    let v = self.apply(callable, args)?;
                    self.push_nested(v, depth + 1)?
                }
                0x92 => {
                    let _kwargs = self.pop()?; // NEWOBJ_EX
                    let (args, depth) = self.pop_nested()?;
                    let class = self.pop()?;
                    let v = self.apply(class, args)?;
                    self.push_nested(v, depth + 1)?
                }
                b'b' => {
                    let (state, depth) = self.pop_nested()?;
                    self.build(state)?;
                    self.deepen_top(depth + 1)?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let (v, depth) = self.copy_top()?;
                    self.push_nested(v, depth)?
                }
                b'i' => return Err(PickleError::Opcode(op, "INST")),
                b'o' => return Err(PickleError::Opcode(op, "OBJ")),
                0x82..=0x84 => return Err(PickleError::Opcode(op, "EXT")),
                b'P' => return Err(PickleError::Opcode(op, "PERSID")),
                0x97 | 0x98 => return Err(PickleError::Opcode(op, "out-of-band buffer")),
                _ => return Err(PickleError::Opcode(op, "unknown")),
            }
        }
    }

    /// The memo key of a PUT or GET: one byte after `short`, four after `long`, else a line
    /// of text (protocol 0).
    fn memo_key(&mut self, op: u8, short: u8, long: u8) -> Result<u64, PickleError> {
        match op {
            o if o == short => self.uint(1),
            o if o == long => self.uint(4),
            _ => self
                .line()?
                .parse()
                .map_err(|_| self.malformed("memo key is not a number")),
        }
    }

    fn extend(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        match self.top()? {
            Value::List(list) => {
                list.extend(items);
                Ok(())
            }
            Value::Object { args, .. } => {
                args.extend(items);
                Ok(())
            }
            _ => Err(self.malformed("APPEND to a non-list")),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PickleError> {
        let new = pairs(items).ok_or_else(|| self.malformed("odd SETITEMS"))?;
        match self.top()? {
            Value::Dict(dict) => {
                dict.extend(new);
                Ok(())
            }
            // A data object filled like a dict (omegaconf, defaultdict subclasses): its items
            // become its state.
            Value::Object { state, .. } => {
                let mut dict = match state.take().map(|b| *b) {
                    Some(Value::Dict(d)) => d,
                    _ => Vec::new(),
                };
                dict.extend(new);
                *state = Some(Box::new(Value::Dict(dict)));
                Ok(())
            }
            _ => Err(self.malformed("SETITEM on a non-dict")),
        }
    }

    fn build(&mut self, new_state: Value) -> Result<(), PickleError> {
        match self.top()? {
            Value::Object { state, .. } => {
                *state = Some(Box::new(new_state));
                Ok(())
            }
            // `_rebuild_tensor_v2`'s results carry no state worth keeping; a dict BUILT with
            // state is a subclass instance whose attributes are skipped.
            Value::Tensor(_) | Value::Dict(_) | Value::List(_) => Ok(()),
            _ => Err(self.malformed("BUILD on a value that has no state")),
        }
    }

    fn persistent(&mut self, pid: Value) -> Result<Value, PickleError> {
        let items = match pid {
            Value::Tuple(items) => items,
            _ => return Err(self.malformed("persistent id is not a tuple")),
        };
        match items.as_slice() {
            [Value::Str(kind), Value::Global(storage_type), Value::Str(key), _location, Value::Int(numel)]
                if kind == "storage" && *numel >= 0 =>
            {
                Ok(Value::Storage(StorageRef {
                    storage_type: storage_type.trim_start_matches("torch.").to_string(),
                    key: key.clone(),
                    numel: *numel as u64,
                }))
            }
            _ => Err(self.malformed("persistent id is not a torch storage")),
        }
    }

    /// `REDUCE`/`NEWOBJ` of `callable` on `args`, by name, without calling anything.
    fn apply(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let name = match callable {
            Value::Global(name) => name,
            _ => return Err(self.malformed("REDUCE of a value that is not a global")),
        };
        let args = match args {
            Value::Tuple(a) => a,
            _ => return Err(self.malformed(format!("arguments of {name} are not a tuple"))),
        };
        if TENSOR_REBUILDERS.contains(&name.as_str()) {
            return self.rebuild_tensor(&name, args);
        }
        if name == "torch._tensor._rebuild_from_type_v2" {
            // (func, type, args, state): a tensor subclass; the plain tensor is func(*args).
            return match args.into_iter().collect::<Vec<_>>().as_slice() {
                [func, _type, Value::Tuple(inner), _state] => {
                    self.apply(func.clone(), Value::Tuple(inner.clone()))
                }
                _ => Err(self.malformed("bad _rebuild_from_type_v2 arguments")),
            };
        }
        match name.as_str() {
            CODECS_ENCODE => match args.as_slice() {
                [Value::Str(text), Value::Str(codec)]
                    if codec == "latin1" || codec == "latin-1" =>
                {
                    text.chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect::<Option<Vec<u8>>>()
                        .map(Value::Bytes)
                        .ok_or_else(|| self.malformed("latin1 text outside latin1"))
                }
                _ => Err(self.malformed("_codecs.encode other than latin1 text")),
            },
            "collections.OrderedDict" | "builtins.dict" | "collections.defaultdict" => {
                Ok(Value::Dict(Vec::new()))
            }
            "builtins.set" | "builtins.frozenset" | "builtins.list" => {
                Ok(Value::List(match args.into_iter().next() {
                    Some(Value::List(items)) | Some(Value::Tuple(items)) => items,
                    _ => Vec::new(),
                }))
            }
            _ if is_data_class(&name) => Ok(Value::Object {
                class: name,
                args,
                state: None,
            }),
            _ => Err(PickleError::Forbidden(name)),
        }
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`, `_rebuild_parameter(tensor,
    /// requires_grad, hooks)`.
    fn rebuild_tensor(&mut self, name: &str, args: Vec<Value>) -> Result<Value, PickleError> {
        let mut args = args.into_iter();
        match args.next() {
            Some(Value::Tensor(t)) if name.ends_with("_rebuild_parameter") => Ok(Value::Tensor(t)),
            Some(Value::Storage(storage)) => {
                let offset = match args.next() {
                    Some(Value::Int(o)) if o >= 0 => o as u64,
                    _ => return Err(self.malformed("tensor offset is not a natural number")),
                };
                let shape = self.naturals(args.next())?;
                let stride = self.naturals(args.next())?;
                if shape.len() != stride.len() {
                    return Err(self.malformed("tensor shape and stride differ in rank"));
                }
                Ok(Value::Tensor(TensorRef {
                    storage,
                    offset,
                    shape,
                    stride,
                }))
            }
            _ => Err(self.malformed(format!("{name} without a storage"))),
        }
    }

    fn naturals(&self, v: Option<Value>) -> Result<Vec<u64>, PickleError> {
        match v {
            Some(Value::Tuple(items)) | Some(Value::List(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::Int(i) if i >= 0 => Ok(i as u64),
                    _ => Err(self.malformed("tensor size or stride is not a natural number")),
                })
                .collect(),
            _ => Err(self.malformed("tensor size or stride is not a tuple")),
        }
    }
}
