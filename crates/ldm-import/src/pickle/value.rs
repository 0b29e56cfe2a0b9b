//! The values the pickle reader rebuilds: plain data, torch storages and tensors, inert
//! objects; never anything callable.

/// A reference to a storage of the archive, from torch's persistent id
/// `('storage', <StorageType>, key, location, numel)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// `FloatStorage`, `HalfStorage`, `BFloat16Storage`, ... (the type's name).
    pub storage_type: String,
    /// Its file in the archive: `<archive>/data/<key>`.
    pub key: String,
    pub numel: u64,
}

/// A tensor as `torch._utils._rebuild_tensor_v2` describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64 (kept as its little-endian bytes; never needed as a number).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// A name from `GLOBAL` that has not been applied to anything.
    Global(String),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// An instance of a data class (numpy scalar, Lightning callback state, ...), kept as the
    /// class name and the arguments and state it was given, never constructed.
    Object {
        class: String,
        args: Vec<Value>,
        state: Option<Box<Value>>,
    },
    Mark,
}

impl Value {
    /// The entry at string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// The size of `v`: one per value, plus its bytes over 8, counted without recursion and
/// only up to `limit` (None when it is larger).
pub(super) fn weight(v: &Value, limit: usize) -> Option<usize> {
    let mut total = 0usize;
    let mut pending = vec![v];
    while let Some(v) = pending.pop() {
        total += 1;
        match v {
            Value::Str(s) => total += s.len() / 8,
            Value::Bytes(b) | Value::BigInt(b) => total += b.len() / 8,
            Value::List(items) | Value::Tuple(items) => pending.extend(items),
            Value::Dict(items) => pending.extend(items.iter().flat_map(|(k, v)| [k, v])),
            Value::Object { args, state, .. } => {
                pending.extend(args);
                pending.extend(state.as_deref());
            }
            _ => {}
        }
        if total > limit {
            return None;
        }
    }
    Some(total)
}

pub(super) fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// LONG1/LONG4: little-endian two's complement.
pub(super) fn long(b: &[u8]) -> Value {
    if b.len() <= 8 {
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut v = [fill; 8];
        v[..b.len()].copy_from_slice(b);
        Value::Int(i64::from_le_bytes(v))
    } else {
        Value::BigInt(b.to_vec())
    }
}
