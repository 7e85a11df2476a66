//! Calls set up over ng for the end-to-end tests, and what their `query`
//! replies say about a stream.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use media_user::ng::Value;

use crate::{
    bed::{A_V4, B_V4},
    daemon::NgClient,
};

/// The relay address/port an SDP tells its receiver to send to.
pub fn relay_of(sdp: &str) -> anyhow::Result<SocketAddr> {
    let info = media_user::sdp::inspect(sdp.as_bytes())?;
    let m = info.media.first().context("no media")?;
    Ok(SocketAddr::new(m.connection.context("no c=")?, m.port))
}

/// The dictionary of the stream on `local port` in a query reply.
pub fn stream(query: &Value, port: u16) -> Option<&Value> {
    for tag in query.get("tags")?.as_dict()?.values() {
        for m in tag.get("medias")?.as_list()? {
            for s in m.get("streams")?.as_list()? {
                if s.get("local port")?.as_int()? == i64::from(port) {
                    return Some(s);
                }
            }
        }
    }
    None
}

/// The stats dictionary of the stream on `local port` in a query reply.
pub fn stream_stats(query: &Value, port: u16) -> Option<&Value> {
    stream(query, port)?.get("stats")
}

/// Call `call_id` from A (198.18.1.2:5000) to B (198.18.2.2:6000), PCMA,
/// over ng: the relay's address for A's media and for B's.
pub fn a_calls_b(ng: &NgClient, call_id: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let sdp = |addr: Ipv4Addr, port: u16| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
        )
    };
    let sdp_of = |reply: &Value| -> anyhow::Result<SocketAddr> {
        relay_of(reply.get("sdp").and_then(Value::as_str).context("sdp")?)
    };
    let relay_b = sdp_of(
        &ng.ok(&Value::dict()
            .with("command", "offer")
            .with("call-id", call_id)
            .with("from-tag", "a")
            .with("sdp", sdp(A_V4, 5000).as_str()))?,
    )?;
    let relay_a = sdp_of(
        &ng.ok(&Value::dict()
            .with("command", "answer")
            .with("call-id", call_id)
            .with("from-tag", "a")
            .with("to-tag", "b")
            .with("sdp", sdp(B_V4, 6000).as_str()))?,
    )?;
    Ok((relay_a, relay_b))
}
