//! `media-relay stats`: the public addresses discovered with STUN.

use ng::Value;

/// `advertise = "stun"`: one line per discovery, the address in effect
/// and when a STUN server last confirmed it.
pub(super) fn lines(s: &Value) -> String {
    let mut out = String::new();
    for p in s
        .get("public addresses")
        .and_then(Value::as_list)
        .unwrap_or_default()
    {
        let t = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let confirmed = p.get("last confirmed").and_then(Value::as_int).map_or_else(
            || "never confirmed".to_owned(),
            |at| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
                format!("confirmed {}s ago", (now - at).max(0))
            },
        );
        out.push_str(&format!(
            "public     {} {} {} ({}, {confirmed}, {} changes){}{}\n",
            t("interface"),
            t("family"),
            t("address"),
            t("status"),
            p.get("changes").and_then(Value::as_int).unwrap_or(0),
            p.get("degraded")
                .and_then(Value::as_str)
                .map(|d| format!("; every STUN server failed: {d}"))
                .unwrap_or_default(),
            p.get("disagreement")
                .and_then(Value::as_str)
                .map(|d| format!("; {d}"))
                .unwrap_or_default(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_show_public_addresses() {
        let s = Value::dict().with(
            "public addresses",
            Value::list([Value::dict()
                .with("interface", "public")
                .with("family", "ipv4")
                .with("address", "198.18.51.10")
                .with("status", "degraded")
                .with("changes", Value::Int(2))
                .with("degraded", "198.18.50.3:3478: no answer to 5 requests")]),
        );
        let t = lines(&s);
        assert!(
            t.contains("public     public ipv4 198.18.51.10 (degraded, never confirmed, 2 changes); every STUN server failed: 198.18.50.3:3478: no answer to 5 requests\n"),
            "{t}"
        );
    }
}
