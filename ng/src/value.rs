//! Builders and accessors for [`Value`], so the session layer can write a
//! reply as `Value::dict().with("sdp", sdp).with("created", now)`.

use std::{collections::BTreeMap, net::IpAddr};

use super::Value;

impl Value {
    /// An empty dictionary, to fill with [`Value::with`].
    #[must_use]
    pub fn dict() -> Value {
        Value::Dict(BTreeMap::new())
    }

    /// A byte string (SDP bodies, tags: ng strings are bytes).
    #[must_use]
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Value {
        Value::Bytes(bytes.into())
    }

    /// A list of anything convertible: `Value::list(["RTP", "filled"])`.
    #[must_use]
    pub fn list<T: Into<Value>>(items: impl IntoIterator<Item = T>) -> Value {
        Value::List(items.into_iter().map(Into::into).collect())
    }

    /// The dictionary with `key` set to `value` (replacing an earlier one).
    ///
    /// Only dictionaries have keys: on any other value this is a no-op that
    /// returns the value unchanged, rather than a panic in the reply path.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Value {
        self.insert(key, value);
        self
    }

    /// Sets `key` in a dictionary; returns the value it replaces. On a
    /// value that is not a dictionary nothing happens and `None` is
    /// returned.
    pub fn insert(&mut self, key: &str, value: impl Into<Value>) -> Option<Value> {
        match self {
            Value::Dict(dict) => dict.insert(key.as_bytes().to_vec(), value.into()),
            Value::Bytes(_) | Value::Int(_) | Value::List(_) => None,
        }
    }

    /// The list with `item` appended; a no-op on anything but a list.
    #[must_use]
    pub fn push(mut self, item: impl Into<Value>) -> Value {
        if let Value::List(items) = &mut self {
            items.push(item.into());
        }
        self
    }

    /// A dictionary entry by its exact key (no spelling normalisation:
    /// that applies to request keys only).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.get(key.as_bytes())
    }

    #[must_use]
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The byte string, if it is UTF-8.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()?).ok()
    }

    #[must_use]
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(int) => Some(*int),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(dict) => Some(dict),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Value::Bytes(text.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Value::Bytes(text.into_bytes())
    }
}

impl From<&String> for Value {
    fn from(text: &String) -> Self {
        Value::from(text.as_str())
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value::Bytes(bytes.to_vec())
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value::Bytes(bytes)
    }
}

impl From<i64> for Value {
    fn from(int: i64) -> Self {
        Value::Int(int)
    }
}

impl From<i32> for Value {
    fn from(int: i32) -> Self {
        Value::Int(int.into())
    }
}

impl From<u32> for Value {
    fn from(int: u32) -> Self {
        Value::Int(int.into())
    }
}

impl From<u16> for Value {
    fn from(int: u16) -> Self {
        Value::Int(int.into())
    }
}

/// Counters are `u64`; bencode integers here are `i64`. A counter past
/// `i64::MAX` (centuries of traffic) is written as `i64::MAX` rather than
/// wrapping negative.
impl From<u64> for Value {
    fn from(int: u64) -> Self {
        Value::Int(i64::try_from(int).unwrap_or(i64::MAX))
    }
}

/// As for `u64`: saturates at `i64::MAX`.
impl From<usize> for Value {
    fn from(int: usize) -> Self {
        Value::Int(i64::try_from(int).unwrap_or(i64::MAX))
    }
}

/// An address as the ng protocol writes it: dotted quad or RFC 5952 text.
impl From<IpAddr> for Value {
    fn from(address: IpAddr) -> Self {
        Value::from(address.to_string())
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Self {
        Value::List(items)
    }
}

impl From<Vec<String>> for Value {
    fn from(items: Vec<String>) -> Self {
        Value::list(items)
    }
}

impl From<BTreeMap<Vec<u8>, Value>> for Value {
    fn from(dict: BTreeMap<Vec<u8>, Value>) -> Self {
        Value::Dict(dict)
    }
}

impl FromIterator<Value> for Value {
    fn from_iter<I: IntoIterator<Item = Value>>(items: I) -> Self {
        Value::List(items.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_query_like_reply() {
        let stats = Value::dict()
            .with("packets", 343_u64)
            .with("bytes", 56_950_u64)
            .with("errors", 0_u64);
        let reply = Value::dict()
            .with("created", 1_402_064_111_i64)
            .with("flags", Value::list(["RTP", "filled"]))
            .with("address", IpAddr::from([198, 18, 99, 1]))
            .with("stats", stats.clone())
            .with(
                "medias",
                Value::list([Value::dict().with("index", 1_u32)]).push(Value::dict()),
            );
        assert_eq!(reply.get("stats"), Some(&stats));
        assert_eq!(
            reply.get("address").and_then(Value::as_str),
            Some("198.18.99.1")
        );
        assert_eq!(
            reply.get("created").and_then(Value::as_int),
            Some(1_402_064_111)
        );
        assert_eq!(
            reply.get("medias").and_then(Value::as_list).map(<[_]>::len),
            Some(2)
        );
        assert_eq!(
            reply.encode().unwrap(),
            b"d7:address11:198.18.99.17:createdi1402064111e5:flagsl3:RTP6:fillede\
              6:mediasld5:indexi1eedee5:statsd5:bytesi56950e6:errorsi0e7:packetsi343eee"
                .to_vec()
        );
    }

    #[test]
    fn with_on_a_non_dict_changes_nothing() {
        assert_eq!(Value::from(3_i64).with("k", "v"), Value::Int(3));
        assert_eq!(Value::from("s").push("v"), Value::from("s"));
        assert_eq!(Value::from(vec![Value::Int(1)]).get("k"), None);
    }

    #[test]
    fn later_with_replaces() {
        let value = Value::dict().with("k", "a").with("k", 2_i64);
        assert_eq!(value.get("k"), Some(&Value::Int(2)));
    }

    #[test]
    fn conversions() {
        assert_eq!(Value::from(u64::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::from(usize::MAX), Value::Int(i64::MAX));
        assert_eq!(Value::from(-1_i32), Value::Int(-1));
        assert_eq!(Value::from(vec![0xff_u8]), Value::Bytes(vec![0xff]));
        assert_eq!(Value::from(&b"x"[..]), Value::bytes("x"));
        assert_eq!(
            Value::from(vec!["a".to_owned()]),
            Value::List(vec![Value::bytes("a")])
        );
        assert_eq!(
            [Value::Int(1)].into_iter().collect::<Value>(),
            Value::List(vec![Value::Int(1)])
        );
        assert_eq!(Value::bytes(vec![0xff]).as_str(), None);
        assert_eq!(
            Value::from("::1".parse::<IpAddr>().unwrap()).as_str(),
            Some("::1")
        );
    }
}
