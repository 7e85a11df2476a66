//! The ng reply cache of a real daemon (issue 16, items 2 and 8): two
//! controllers using the same cookie each get their own call; a cookie
//! reused by one controller for another request is refused and never
//! applied; a retransmission is answered byte for byte without being
//! applied again; a small `ng-cache-bytes` evicts (counted in /metrics)
//! and never holds more than its budget.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use media_relay_tests::{Bed, BedOptions, Netns, bed::A_V4, daemon::Daemon, http, root_test};
use media_user::ng::{self, Value};

const METRICS: &str = "127.0.0.1:9464";

fn socket(ns: &Netns) -> anyhow::Result<UdpSocket> {
    let s = ns.enter(|| Ok(UdpSocket::bind("127.0.0.1:0")?))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Send `dict` under `cookie`; the reply's bytes and dictionary.
fn request(
    s: &UdpSocket,
    server: SocketAddr,
    cookie: &str,
    dict: &Value,
) -> anyhow::Result<(Vec<u8>, Value)> {
    s.send_to(&ng::encode_request(cookie.as_bytes(), dict)?, server)?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = s.recv_from(&mut buf).context("no ng reply")?;
    let (got, reply) = ng::parse_reply(&buf[..n])?;
    ensure!(got == cookie.as_bytes(), "reply to another cookie");
    Ok((buf[..n].to_vec(), reply))
}

fn offer(call: &str, port: u16) -> Value {
    Value::dict()
        .with("command", "offer")
        .with("call-id", call)
        .with("from-tag", "a")
        .with(
            "sdp",
            format!(
                "v=0\r\no=- 1 1 IN IP4 {A_V4}\r\ns=-\r\nc=IN IP4 {A_V4}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\n"
            )
            .as_str(),
        )
}

fn result(v: &Value) -> Option<&str> {
    v.get("result").and_then(Value::as_str)
}

fn calls(s: &UdpSocket, server: SocketAddr, cookie: &str) -> anyhow::Result<Vec<String>> {
    let (_, list) = request(s, server, cookie, &Value::dict().with("command", "list"))?;
    Ok(list
        .get("calls")
        .and_then(Value::as_list)
        .context("calls")?
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

#[test]
fn ng_cache_by_source_and_cookie_with_a_byte_budget() -> anyhow::Result<()> {
    root_test("ng_cache_by_source_and_cookie_with_a_byte_budget", |t| {
        let bed = Bed::new(BedOptions::default())?;
        let daemon = Daemon::start_legs(
            t,
            &bed.relay,
            "off",
            &["--ng-cache-bytes", "65536", "--metrics-listen", METRICS],
        )?;
        let result = (|| -> anyhow::Result<()> {
            let server = daemon.ng;
            let (one, two) = (socket(&bed.relay)?, socket(&bed.relay)?);
            // Two controllers counting cookies alike.
            let (bytes_one, reply_one) = request(&one, server, "mr-sip-1", &offer("one", 5000))?;
            let (_, reply_two) = request(&two, server, "mr-sip-1", &offer("two", 5002))?;
            ensure!(result(&reply_one) == Some("ok"), "{reply_one:?}");
            ensure!(result(&reply_two) == Some("ok"), "{reply_two:?}");
            ensure!(
                reply_one.get("sdp") != reply_two.get("sdp"),
                "the second controller got the first one's reply"
            );
            let mut listed = calls(&one, server, "list-1")?;
            listed.sort();
            ensure!(listed == ["one", "two"], "calls {listed:?}");

            // A retransmission: the same bytes, nothing applied again.
            let (again, _) = request(&one, server, "mr-sip-1", &offer("one", 5000))?;
            ensure!(again == bytes_one, "a retransmission got other bytes");

            // The first controller restarted and reuses its cookie.
            let (_, reused) = request(&one, server, "mr-sip-1", &offer("three", 5004))?;
            ensure!(result(&reused) == Some("error"), "{reused:?}");
            ensure!(
                reused
                    .get("error-reason")
                    .and_then(Value::as_str)
                    .is_some_and(|r| r.starts_with("cookie already used")),
                "{reused:?}"
            );
            let mut listed = calls(&one, server, "list-2")?;
            listed.sort();
            ensure!(
                listed == ["one", "two"],
                "the refused offer was applied: {listed:?}"
            );

            // An oversized cookie is refused too.
            let long = "k".repeat(200);
            let (_, refused) =
                request(&one, server, &long, &Value::dict().with("command", "ping"))?;
            ensure!(result(&refused) == Some("error"), "{refused:?}");

            // Statistics replies are about a kilobyte: 200 of them do not fit
            // in 64 KiB.
            for i in 0..200 {
                let (_, s) = request(
                    &two,
                    server,
                    &format!("stats-{i}"),
                    &Value::dict().with("command", "statistics"),
                )?;
                ensure!(result(&s) == Some("ok"), "{s:?}");
            }
            // The metrics are copied once a second.
            std::thread::sleep(Duration::from_millis(1500));
            let (status, body) = http::get(&bed.relay, METRICS.parse()?, "/metrics")?;
            ensure!(status == 200, "/metrics answered {status}");
            let sample = |series: &str| {
                http::sample(&body, series).with_context(|| format!("no {series} in:\n{body}"))
            };
            let evictions = sample("media_relay_ng_cache_evictions_total")?;
            let held = sample("media_relay_ng_cache_bytes")?;
            ensure!(evictions >= 100.0, "{evictions} evictions");
            ensure!(held <= 65_536.0, "the cache holds {held} bytes");
            ensure!(
                sample("media_relay_ng_refused_total{reason=\"cookie_reused\"}")? == 1.0,
                "cookie_reused"
            );
            ensure!(
                sample("media_relay_ng_refused_total{reason=\"cookie_too_long\"}")? == 1.0,
                "cookie_too_long"
            );
            ensure!(
                sample("media_relay_ng_retransmissions_total")? == 1.0,
                "retransmissions"
            );
            Ok(())
        })();
        daemon.report_failure(&result);
        result
    })
}
