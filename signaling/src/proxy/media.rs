//! ng requests for media anchoring (the rtpengine_manage model), and
//! what the agent reads back.

use std::net::IpAddr;

use ng::Value;

/// Which party's SDP, and in which role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp<'a> {
    pub call_id: &'a str,
    /// The party whose SDP this is (the offerer for an offer).
    pub from_tag: &'a str,
    /// The other party, when known.
    pub to_tag: Option<&'a str>,
    pub via_branch: Option<&'a str>,
    pub sdp: &'a [u8],
    /// The SIP message's source address.
    pub received_from: IpAddr,
    /// Interface names for the sender's and the receiver's side.
    pub direction: Option<(&'a str, &'a str)>,
}

fn base(command: &str, s: &Sdp<'_>) -> Value {
    let mut v = Value::dict()
        .with("command", command)
        .with("call-id", s.call_id)
        .with("from-tag", s.from_tag)
        .with("sdp", Value::Bytes(s.sdp.to_vec()))
        .with(
            "received-from",
            Value::List(vec![
                Value::from(if s.received_from.is_ipv4() {
                    "IP4"
                } else {
                    "IP6"
                }),
                Value::from(s.received_from.to_string()),
            ]),
        )
        .with(
            "replace",
            Value::List(vec![
                Value::from("origin"),
                Value::from("session-connection"),
            ]),
        )
        .with("ICE", "remove");
    if let Some(t) = s.to_tag {
        v = v.with("to-tag", t);
    }
    if let Some(b) = s.via_branch {
        v = v.with("via-branch", b);
    }
    if let Some((from, to)) = s.direction {
        v = v.with(
            "direction",
            Value::List(vec![Value::from(from), Value::from(to)]),
        );
    }
    v
}

pub fn offer(s: &Sdp<'_>) -> Value {
    base("offer", s)
}

pub fn answer(s: &Sdp<'_>) -> Value {
    let mut v = base("answer", s);
    // `direction` means nothing in an answer (ng docs).
    if let Value::Dict(d) = &mut v {
        d.remove(b"direction".as_slice());
    }
    v
}

pub fn delete(call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> Value {
    let mut v = Value::dict()
        .with("command", "delete")
        .with("call-id", call_id);
    if let Some(t) = from_tag {
        v = v.with("from-tag", t);
    }
    if let Some(t) = to_tag {
        v = v.with("to-tag", t);
    }
    v
}

pub fn list() -> Value {
    Value::dict()
        .with("command", "list")
        .with("limit", 1000_i64)
}

/// The rewritten SDP of an ok reply, or why there is none.
pub fn sdp_of(reply: &Value) -> Result<Vec<u8>, String> {
    match reply.get("result").and_then(Value::as_str) {
        Some("ok") => reply
            .get("sdp")
            .and_then(Value::as_bytes)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "media node replied without SDP".to_owned()),
        Some("error") => Err(reply
            .get("error-reason")
            .and_then(Value::as_str)
            .unwrap_or("media node error")
            .to_owned()),
        other => Err(format!("unexpected media node result {other:?}")),
    }
}

/// Call-IDs a media node ended by itself (media-relay's `list` extension).
pub fn timed_out(reply: &Value) -> Vec<String> {
    reply
        .get("timed out")
        .and_then(Value::as_list)
        .map(|l| {
            l.iter()
                .filter_map(|e| e.get("call-id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies() {
        let s = Sdp {
            call_id: "c",
            from_tag: "a",
            to_tag: None,
            via_branch: Some("z9hG4bK1"),
            sdp: b"v=0\r\n",
            received_from: "198.18.1.2".parse().unwrap(),
            direction: Some(("carrier", "pbx")),
        };
        let o = offer(&s);
        assert_eq!(o.get("command").and_then(Value::as_str), Some("offer"));
        assert_eq!(
            o.get("direction")
                .and_then(Value::as_list)
                .map(<[Value]>::len),
            Some(2)
        );
        let a = answer(&Sdp {
            to_tag: Some("b"),
            ..s
        });
        assert!(a.get("direction").is_none());
        assert_eq!(a.get("to-tag").and_then(Value::as_str), Some("b"));
        let ok = Value::dict().with("result", "ok").with("sdp", "v=0");
        assert_eq!(sdp_of(&ok).unwrap(), b"v=0");
        let err = Value::dict()
            .with("result", "error")
            .with("error-reason", "Ran out of ports");
        assert_eq!(sdp_of(&err).unwrap_err(), "Ran out of ports");
        let l = Value::dict().with(
            "timed out",
            Value::List(vec![
                Value::dict().with("call-id", "x").with("reason", "timeout"),
            ]),
        );
        assert_eq!(timed_out(&l), vec!["x".to_owned()]);
    }
}
