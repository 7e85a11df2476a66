//! Bencode to [`Value`] and back, with `bendy` doing the byte work.
//!
//! # Why dictionaries are assembled here
//!
//! `bendy` is strict: its decoder refuses a dictionary whose keys are not in
//! ascending order, as the bencode specification (BEP 3) requires. ng peers
//! do not honour that — rtpengine's `docs/ng_control_protocol.md` says "the
//! bencode standard's requirement that dictionary keys must be presented in
//! the lexicographical order is currently not honored", and the Kamailio
//! `rtpengine` module writes keys in the order it builds them (`sdp` first,
//! `command` near the end). Only top-level values are free of that check in
//! `bendy`, so each token is read by a fresh [`bendy::decoding::Decoder`]
//! positioned on it — `bendy` still does all of the lexing (length prefixes,
//! canonical integers, truncation) — and this module nests the tokens into
//! lists and dictionaries, in any key order. A key given twice in one
//! dictionary is still refused: which value was meant cannot be told.
//! The price is a `bendy` decoder set up per token: about 8 µs for the
//! captured `offer` fixture (release build), negligible next to a signalling
//! round trip.
//!
//! Nesting is bounded ([`MAX_DEPTH`]) so that a datagram of `llll…` cannot
//! exhaust the stack; real requests nest three or four levels deep
//! (`codec` → `strip` → list).
//!
//! Encoding goes through `bendy`'s encoder, which writes dictionary keys
//! sorted, as bencode requires: [`Value::Dict`] is a `BTreeMap`, so they
//! already are.

use std::collections::BTreeMap;

use bendy::{
    decoding::Decoder,
    encoding::{Error as EncodingError, SingleItemEncoder, ToBencode},
    state_tracker::Token,
};
use thiserror::Error;

use super::Value;

/// Deepest nesting of lists and dictionaries accepted, on decoding and on
/// encoding. A `query` reply, the deepest thing the daemon writes, nests
/// eight levels (reply → `tags` → tag → `medias` → media → `streams` →
/// stream → `endpoint`).
pub const MAX_DEPTH: usize = 32;

/// Bencode that cannot be read, with the byte where reading stopped.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid bencode at byte {offset}: {kind}")]
pub struct DecodeError {
    /// Offset into the buffer given to the decoder.
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeErrorKind {
    #[error("unexpected end of data")]
    UnexpectedEnd,
    /// `bendy` refused the token; `detail` is its explanation (offsets in it
    /// count from the token's first byte).
    #[error("{detail}")]
    Token { detail: String },
    #[error("integer {digits} does not fit in 64 bits")]
    IntegerOutOfRange { digits: String },
    /// Not the start of any bencode token.
    #[error("unexpected byte '{}'", std::ascii::escape_default(*.byte))]
    UnexpectedByte { byte: u8 },
    #[error("`e` where a value was expected")]
    StrayEnd,
    #[error("dictionary key is not a byte string")]
    KeyNotString,
    #[error("dictionary key `{key}` is given twice")]
    DuplicateKey { key: String },
    #[error("nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("trailing data after the value")]
    TrailingData,
}

/// A value could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("cannot encode bencode: {detail}")]
pub struct EncodeError {
    pub detail: String,
}

/// Decodes the one value starting at `start` in `buf`; returns it and the
/// offset just past it. What follows is the caller's business.
pub(crate) fn decode_at(buf: &[u8], start: usize) -> Result<(Value, usize), DecodeError> {
    let mut reader = Reader { buf, pos: start };
    let value = reader.value(0)?;
    Ok((value, reader.pos))
}

impl Value {
    /// Decodes a buffer holding exactly one bencoded value. Dictionary keys
    /// may come in any order (see the module documentation).
    pub fn decode(buf: &[u8]) -> Result<Value, DecodeError> {
        let (value, end) = decode_at(buf, 0)?;
        if end == buf.len() {
            Ok(value)
        } else {
            Err(DecodeError {
                offset: end,
                kind: DecodeErrorKind::TrailingData,
            })
        }
    }

    /// Encodes the value; dictionary keys come out sorted. Fails only for a
    /// value nested deeper than [`MAX_DEPTH`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.to_bencode().map_err(|err| EncodeError {
            detail: bendy_detail(&err),
        })
    }
}

impl ToBencode for Value {
    const MAX_DEPTH: usize = MAX_DEPTH;

    fn encode(&self, encoder: SingleItemEncoder) -> Result<(), EncodingError> {
        match self {
            Value::Bytes(bytes) => encoder.emit_bytes(bytes),
            Value::Int(int) => encoder.emit_int(*int),
            Value::List(items) => encoder.emit_list(|list| {
                for item in items {
                    list.emit(item)?;
                }
                Ok(())
            }),
            Value::Dict(dict) => encoder.emit_dict(|mut pairs| {
                for (key, value) in dict {
                    pairs.emit_pair(key, value)?;
                }
                Ok(())
            }),
        }
    }
}

/// `bendy`'s errors wrap a structural error whose text is the useful part.
fn bendy_detail(err: &dyn std::error::Error) -> String {
    err.source()
        .map_or_else(|| err.to_string(), ToString::to_string)
}

/// One token, as `bendy` read it.
enum Lexeme<'a> {
    List,
    Dict,
    End,
    Bytes(&'a [u8]),
    Int(i64),
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn at_end_marker(&self) -> bool {
        self.buf.get(self.pos) == Some(&b'e')
    }

    /// Reads the token at `pos` and moves past it.
    fn next(&mut self) -> Result<Lexeme<'a>, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        match rest.first() {
            None => return Err(error(start, DecodeErrorKind::UnexpectedEnd)),
            // `bendy` refuses an `e` outside any container, which is where
            // every token is for it.
            Some(b'e') => {
                self.pos += 1;
                return Ok(Lexeme::End);
            }
            Some(b'd' | b'l' | b'i' | b'0'..=b'9') => {}
            // Said plainly here; `bendy` words it as a malformed number.
            Some(&byte) => {
                return Err(error(start, DecodeErrorKind::UnexpectedByte { byte }));
            }
        }
        let token = match Decoder::new(rest).tokens().next() {
            Some(Ok(token)) => token,
            Some(Err(err)) => {
                let detail = bendy_detail(&err);
                return Err(error(start, DecodeErrorKind::Token { detail }));
            }
            None => return Err(error(start, DecodeErrorKind::UnexpectedEnd)),
        };
        let (lexeme, len) = match token {
            Token::List => (Lexeme::List, 1),
            Token::Dict => (Lexeme::Dict, 1),
            Token::End => (Lexeme::End, 1),
            Token::String(bytes) => (Lexeme::Bytes(bytes), end_of(rest, bytes)),
            // `i<digits>e`: one byte past the digits.
            Token::Num(digits) => {
                let int = digits.parse::<i64>().map_err(|_| {
                    error(
                        start,
                        DecodeErrorKind::IntegerOutOfRange {
                            digits: digits.to_owned(),
                        },
                    )
                })?;
                (
                    Lexeme::Int(int),
                    end_of(rest, digits.as_bytes()).saturating_add(1),
                )
            }
        };
        // The token lies inside `rest` by construction; a length past it
        // would be a `bendy` bug, refused rather than trusted.
        if len == 0 || len > rest.len() {
            return Err(error(
                start,
                DecodeErrorKind::Token {
                    detail: "token boundary out of range".to_owned(),
                },
            ));
        }
        self.pos = start + len;
        Ok(lexeme)
    }

    /// Reads one value; `depth` is the number of containers around it.
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let start = self.pos;
        match self.next()? {
            Lexeme::Bytes(bytes) => Ok(Value::Bytes(bytes.to_vec())),
            Lexeme::Int(int) => Ok(Value::Int(int)),
            Lexeme::End => Err(error(start, DecodeErrorKind::StrayEnd)),
            Lexeme::List => {
                check_depth(start, depth)?;
                let mut items = Vec::new();
                while !self.at_end_marker() {
                    items.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(items))
            }
            Lexeme::Dict => {
                check_depth(start, depth)?;
                let mut dict = BTreeMap::new();
                loop {
                    let key_start = self.pos;
                    let key = match self.next()? {
                        Lexeme::End => break,
                        Lexeme::Bytes(key) => key,
                        Lexeme::List | Lexeme::Dict | Lexeme::Int(_) => {
                            return Err(error(key_start, DecodeErrorKind::KeyNotString));
                        }
                    };
                    let value = self.value(depth + 1)?;
                    if dict.insert(key.to_vec(), value).is_some() {
                        let key = String::from_utf8_lossy(key).into_owned();
                        return Err(error(key_start, DecodeErrorKind::DuplicateKey { key }));
                    }
                }
                Ok(Value::Dict(dict))
            }
        }
    }
}

/// A container opened at `start` inside `depth` others.
fn check_depth(start: usize, depth: usize) -> Result<(), DecodeError> {
    if depth >= MAX_DEPTH {
        Err(error(start, DecodeErrorKind::TooDeep { max: MAX_DEPTH }))
    } else {
        Ok(())
    }
}

fn error(offset: usize, kind: DecodeErrorKind) -> DecodeError {
    DecodeError { offset, kind }
}

/// Offset just past `part`, a sub-slice of `whole` that `bendy` returned.
fn end_of(whole: &[u8], part: &[u8]) -> usize {
    let offset = part.as_ptr().addr().wrapping_sub(whole.as_ptr().addr());
    offset.saturating_add(part.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict(pairs: &[(&str, Value)]) -> Value {
        Value::Dict(
            pairs
                .iter()
                .map(|(key, value)| (key.as_bytes().to_vec(), value.clone()))
                .collect(),
        )
    }

    fn decode_err(buf: &[u8]) -> DecodeError {
        match Value::decode(buf) {
            Ok(value) => panic!("{:?} decoded to {value:?}", String::from_utf8_lossy(buf)),
            Err(err) => err,
        }
    }

    #[test]
    fn round_trips_nested_values() {
        let value = dict(&[
            ("bytes", Value::Bytes(vec![0, 0xff, b'e', b':', b' ', 0x80])),
            ("empty", Value::Bytes(Vec::new())),
            ("neg", Value::Int(-42)),
            ("zero", Value::Int(0)),
            ("min", Value::Int(i64::MIN)),
            ("max", Value::Int(i64::MAX)),
            (
                "list",
                Value::List(vec![
                    Value::Int(1),
                    Value::List(vec![]),
                    dict(&[("inner", Value::List(vec![Value::Bytes(b"x".to_vec())]))]),
                ]),
            ),
            ("dict", dict(&[("a", dict(&[])), ("b", Value::Int(-1))])),
        ]);
        let bytes = value.encode().unwrap();
        assert_eq!(Value::decode(&bytes).unwrap(), value);
        assert_eq!(Value::decode(&bytes).unwrap().encode().unwrap(), bytes);
    }

    #[test]
    fn encodes_exact_bytes_with_sorted_keys() {
        let value = dict(&[
            ("zeta", Value::Int(-7)),
            ("Alpha", Value::List(vec![Value::Bytes(b"a b".to_vec())])),
            (
                "mid",
                dict(&[("y", Value::Int(0)), ("x", Value::Bytes(vec![]))]),
            ),
        ]);
        assert_eq!(
            value.encode().unwrap(),
            b"d5:Alphal3:a be3:midd1:x0:1:yi0ee4:zetai-7ee".to_vec()
        );
    }

    #[test]
    fn accepts_unsorted_keys_as_kamailio_sends_them() {
        let value = Value::decode(b"d3:sdp3:v=07:call-id1:c7:commandd1:zi1e1:ai2eee").unwrap();
        assert_eq!(
            value,
            dict(&[
                ("sdp", Value::Bytes(b"v=0".to_vec())),
                ("call-id", Value::Bytes(b"c".to_vec())),
                (
                    "command",
                    dict(&[("a", Value::Int(2)), ("z", Value::Int(1))])
                ),
            ])
        );
    }

    #[test]
    fn reports_where_and_why() {
        let cases: &[(&[u8], usize, DecodeErrorKind)] = &[
            (b"", 0, DecodeErrorKind::UnexpectedEnd),
            (b"d", 1, DecodeErrorKind::UnexpectedEnd),
            (b"d3:foo", 6, DecodeErrorKind::UnexpectedEnd),
            (
                b"l5:abce",
                1,
                DecodeErrorKind::Token {
                    detail: "Reached EOF in the middle of a message".to_owned(),
                },
            ),
            (b"e", 0, DecodeErrorKind::StrayEnd),
            (b"-1:a", 0, DecodeErrorKind::UnexpectedByte { byte: b'-' }),
            (b"l x", 1, DecodeErrorKind::UnexpectedByte { byte: b' ' }),
            (b"d\xff", 1, DecodeErrorKind::UnexpectedByte { byte: 0xff }),
            (b"di1ei2ee", 1, DecodeErrorKind::KeyNotString),
            (
                b"d1:ai1e1:ai2ee",
                7,
                DecodeErrorKind::DuplicateKey {
                    key: "a".to_owned(),
                },
            ),
            (
                b"i99999999999999999999e",
                0,
                DecodeErrorKind::IntegerOutOfRange {
                    digits: "99999999999999999999".to_owned(),
                },
            ),
            (b"i1ex", 3, DecodeErrorKind::TrailingData),
        ];
        for (input, offset, kind) in cases {
            let err = decode_err(input);
            assert_eq!(
                (err.offset, &err.kind),
                (*offset, kind),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn refuses_non_canonical_tokens() {
        for input in [
            &b"i03e"[..],
            b"i-0e",
            b"i-e",
            b"ie",
            b"i1.5e",
            b"03:abc",
            b"99999999999999999999999:a",
        ] {
            let err = decode_err(input);
            assert!(
                matches!(err.kind, DecodeErrorKind::Token { .. }),
                "{input:?}: {err}"
            );
            assert_eq!(err.offset, 0, "{input:?}");
        }
    }

    #[test]
    fn bounds_nesting() {
        let nested = |depth: usize| {
            let mut buf = vec![b'l'; depth];
            buf.extend(std::iter::repeat_n(b'e', depth));
            buf
        };
        assert!(Value::decode(&nested(MAX_DEPTH)).is_ok());
        let err = decode_err(&nested(MAX_DEPTH + 1));
        assert_eq!(err.kind, DecodeErrorKind::TooDeep { max: MAX_DEPTH });
        assert_eq!(err.offset, MAX_DEPTH);
        // Far deeper than any stack could recurse.
        let err = decode_err(&vec![b'l'; 1_000_000]);
        assert_eq!(err.kind, DecodeErrorKind::TooDeep { max: MAX_DEPTH });

        let mut deep = Value::List(vec![]);
        for _ in 1..MAX_DEPTH {
            deep = Value::List(vec![deep]);
        }
        assert!(deep.encode().is_ok());
        assert!(Value::List(vec![deep]).encode().is_err());
    }

    #[test]
    fn error_text() {
        assert_eq!(
            decode_err(b"d1:ai1e1:ai2ee").to_string(),
            "invalid bencode at byte 7: dictionary key `a` is given twice"
        );
        assert_eq!(
            decode_err(b"l\xffe").to_string(),
            "invalid bencode at byte 1: unexpected byte '\\xff'"
        );
        assert_eq!(
            decode_err(b"i12x").to_string(),
            "invalid bencode at byte 0: Malformed number of unexpected character: \
             Expected 'e' or '0'..'9', got 'x' at offset 3"
        );
    }
}
