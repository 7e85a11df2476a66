//! Replies: `<cookie> <bencoded dict>` with a `result` key — `pong`, `ok`
//! (plus whatever the command returns) or `error` with `error-reason`
//! (`docs/ng_control_protocol.md`, introduction).

use std::collections::BTreeMap;

use super::{NgError, Value};

/// What the daemon answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// `result: pong`
    Pong,
    /// `result: ok` plus these keys (the session layer fills sdp, tag data, etc.)
    Ok(BTreeMap<Vec<u8>, Value>),
    /// `result: error`, `error-reason: <reason>`
    Error(String),
}

impl Reply {
    /// `result: ok` with no other key.
    #[must_use]
    pub fn ok() -> Reply {
        Reply::Ok(BTreeMap::new())
    }

    /// The reply as a dictionary, without the cookie.
    #[must_use]
    pub fn to_value(&self) -> Value {
        match self {
            Reply::Pong => Value::dict().with("result", "pong"),
            // `result` is set last so that a stray `result` key from the
            // caller cannot turn the reply into something else.
            Reply::Ok(keys) => Value::Dict(keys.clone()).with("result", "ok"),
            // The docs: "No other keys should be present in the error case."
            Reply::Error(reason) => Value::dict()
                .with("result", "error")
                .with("error-reason", reason.as_str()),
        }
    }
}

impl From<NgError> for Reply {
    fn from(err: NgError) -> Self {
        Reply::Error(err.to_string())
    }
}

/// What is sent if a reply cannot be encoded (nested deeper than
/// [`super::MAX_DEPTH`], a session-layer bug): still a well-formed error the
/// peer can read, instead of silence.
const UNENCODABLE: &str = "internal error: the reply could not be encoded";

/// `<cookie> <bencoded dict>`
#[must_use]
pub fn encode_reply(cookie: &[u8], reply: &Reply) -> Vec<u8> {
    let body = reply.to_value().encode().unwrap_or_else(|_| {
        Reply::Error(UNENCODABLE.to_owned())
            .to_value()
            .encode()
            // Two flat keys always encode; this is only so the function
            // has no panicking path at all.
            .unwrap_or_else(|_| b"d6:result5:errore".to_vec())
    });
    let mut datagram = Vec::with_capacity(cookie.len() + 1 + body.len());
    datagram.extend_from_slice(cookie);
    datagram.push(b' ');
    datagram.extend_from_slice(&body);
    datagram
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong() {
        assert_eq!(
            encode_reply(b"5323_1", &Reply::Pong),
            b"5323_1 d6:result4:ponge"
        );
    }

    #[test]
    fn error_has_result_and_reason_only() {
        assert_eq!(
            encode_reply(b"c", &Reply::Error("missing key `call-id`".to_owned())),
            b"c d12:error-reason21:missing key `call-id`6:result5:errore"
        );
        assert_eq!(
            Reply::from(NgError::MissingKey { key: "sdp" }),
            Reply::Error("missing key `sdp`".to_owned())
        );
    }

    #[test]
    fn ok_merges_result_with_the_given_keys() {
        assert_eq!(encode_reply(b"0.1", &Reply::ok()), b"0.1 d6:result2:oke");
        let Value::Dict(keys) = Value::dict()
            .with("sdp", "v=0\r\n")
            .with("warning", "x")
            .with("created", 7_i64)
            .with("result", "pong")
        else {
            unreachable!()
        };
        assert_eq!(
            encode_reply(b"0.1", &Reply::Ok(keys)),
            b"0.1 d7:createdi7e6:result2:ok3:sdp5:v=0\r\n7:warning1:xe"
        );
    }

    #[test]
    fn an_unencodable_reply_becomes_an_error() {
        let mut deep = Value::List(vec![]);
        for _ in 0..crate::MAX_DEPTH {
            deep = Value::List(vec![deep]);
        }
        let Value::Dict(keys) = Value::dict().with("deep", deep) else {
            unreachable!()
        };
        assert_eq!(
            encode_reply(b"k", &Reply::Ok(keys)),
            b"k d12:error-reason46:internal error: the reply could not be encoded\
              6:result5:errore"
        );
    }
}
