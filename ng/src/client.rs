//! The client side of ng, for a SIP agent driving media nodes: requests
//! out, replies in. Replies are read as leniently as requests (any key
//! order: rtpengine does not sort its dictionaries).

use super::{NgError, Value, bencode::decode_at};

/// `<cookie> <bencoded dict>`.
pub fn encode_request(cookie: &[u8], dict: &Value) -> Result<Vec<u8>, NgError> {
    let mut out = cookie.to_vec();
    out.push(b' ');
    out.extend(dict.encode().map_err(|_| NgError::NotADict)?);
    Ok(out)
}

/// Split a reply datagram into its cookie and dictionary.
pub fn parse_reply(buf: &[u8]) -> Result<(Vec<u8>, Value), NgError> {
    let space = match buf.iter().position(|&byte| byte == b' ') {
        None | Some(0) => return Err(NgError::NoCookie),
        Some(space) => space,
    };
    let start = space + 1;
    if buf.get(start) != Some(&b'd') {
        return Err(NgError::NotADict);
    }
    let (value, end) = decode_at(buf, start)?;
    if end != buf.len() {
        return Err(NgError::TrailingData { offset: end });
    }
    Ok((buf[..space].to_vec(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_unsorted_replies() {
        let req = Value::dict().with("command", "ping");
        let bytes = encode_request(b"c1", &req).unwrap();
        assert_eq!(bytes, b"c1 d7:command4:pinge");
        // rtpengine writes "sdp" before "result": not sorted.
        let (cookie, v) = parse_reply(b"c1 d3:sdp3:v=06:result2:oke").unwrap();
        assert_eq!(cookie, b"c1");
        assert_eq!(v.get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(v.get("sdp").and_then(Value::as_str), Some("v=0"));
        assert!(parse_reply(b"nocookie").is_err());
        assert!(parse_reply(b"c d6:result2:okeX").is_err());
    }
}
