//! Messages the proxy makes itself: responses (RFC 3261 §8.2.6), CANCEL
//! (§9.1), the ACK for a non-2xx response (§17.1.1.3), new requests, and
//! the answer to a request that did not parse (§18.3).

use super::{
    CALL_ID, CONTENT_LENGTH, CSEQ, DEFAULT_MAX_FORWARDS, FROM, Field, MAX_FORWARDS, Message,
    MessageError, Method, ROUTE, StartLine, TO, VIA,
    edit::sanitize,
    framing::{find_head_end, split_lines},
    names::{self, TIMESTAMP},
    syntax::{is_token, parse_sip_uri, split_list},
};

impl Message {
    /// A response to this request (§8.2.6): the same Via headers (all, in
    /// order), From, To (plus `to_tag` if To has none), Call-ID, CSeq;
    /// Timestamp too for a 100 (§8.2.6.1); `Content-Length: 0`. The reason
    /// phrase is sanitized like any header value; `status` should be
    /// 100–699 (§7.2), or the result will not parse at the far end.
    #[must_use]
    pub fn response(&self, status: u16, reason: &str, to_tag: Option<&str>) -> Message {
        let mut fields: Vec<Field> = Vec::new();
        for name in [VIA, FROM, TO, CALL_ID, CSEQ] {
            fields.extend(self.values(name).map(|value| Field::new(name, value)));
        }
        if status == 100 {
            fields.extend(
                self.values(TIMESTAMP)
                    .map(|value| Field::new(TIMESTAMP, value)),
            );
        }
        response_from(fields, status, reason, to_tag)
    }

    /// A CANCEL for this INVITE (§9.1): same Request-URI, Call-ID, From, To,
    /// CSeq number with method CANCEL, only the top Via, Route headers
    /// copied, Max-Forwards 70. On a response (a caller bug) it returns a
    /// copy of the response and logs a warning.
    #[must_use]
    pub fn cancel(&self) -> Message {
        let Some(to) = self.first(TO) else {
            return self.copy_for_misuse("cancel");
        };
        self.request_like(Method::Cancel, to)
            .unwrap_or_else(|| self.copy_for_misuse("cancel"))
    }

    /// The ACK for a non-2xx final `response` to this INVITE (§17.1.1.3):
    /// Request-URI, top Via, Call-ID, From, CSeq number of the INVITE with
    /// method ACK, To from the response, Route headers from the INVITE,
    /// Max-Forwards 70. On a response (a caller bug) it returns a copy of
    /// `self` and logs a warning.
    #[must_use]
    pub fn ack_for(&self, response: &Message) -> Message {
        let Some(to) = response.first(TO).or_else(|| self.first(TO)) else {
            return self.copy_for_misuse("ack_for");
        };
        self.request_like(Method::Ack, to)
            .unwrap_or_else(|| self.copy_for_misuse("ack_for"))
    }

    /// CANCEL / ACK: Via (top), Route…, Max-Forwards, From, To, Call-ID,
    /// CSeq, Content-Length. None if `self` is not a request.
    fn request_like(&self, method: Method, to: &str) -> Option<Message> {
        let StartLine::Request { uri, uri_text, .. } = &self.start else {
            return None;
        };
        let mut fields: Vec<Field> = Vec::new();
        fields.extend(self.first(VIA).map(|via| Field::new(VIA, via)));
        fields.extend(self.values(ROUTE).map(|route| Field::new(ROUTE, route)));
        fields.push(Field::new(MAX_FORWARDS, DEFAULT_MAX_FORWARDS.to_string()));
        fields.extend(self.values(FROM).map(|from| Field::new(FROM, from)));
        fields.push(Field::new(TO, to));
        fields.extend(
            self.values(CALL_ID)
                .map(|call_id| Field::new(CALL_ID, call_id)),
        );
        fields.push(Field::new(
            CSEQ,
            format!("{} {}", self.cseq().0, method.as_str()),
        ));
        fields.push(Field::new(CONTENT_LENGTH, "0"));
        Some(Message {
            start: StartLine::Request {
                method,
                method_name: method.as_str().to_owned(),
                uri: uri.clone(),
                uri_text: uri_text.clone(),
            },
            fields,
            body: Vec::new(),
        })
    }

    fn copy_for_misuse(&self, what: &'static str) -> Message {
        tracing::warn!(
            what,
            "called on a message that is not a request; returning a copy"
        );
        self.clone()
    }

    /// Build a new request from scratch (for the proxy's own BYE on media
    /// timeout): start line, headers in order (compact names understood,
    /// values sanitized, any Content-Length ignored), `Content-Length: 0`,
    /// no body. The result is validated like a received message, so a
    /// missing mandatory header or a CSeq for another method is an error
    /// here rather than at the far end.
    pub fn request(
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Result<Message, MessageError> {
        if method == Method::Other {
            return Err(MessageError::UnnamedMethod);
        }
        let uri = uri.trim();
        parse_sip_uri(uri)?;
        let mut text = format!("{} {uri} SIP/2.0\r\n", method.as_str());
        for &(name, value) in headers {
            let name = names::canonical(name.trim());
            if !is_token(&name) {
                return Err(MessageError::BadHeaderName {
                    name: super::error::excerpt(&name),
                });
            }
            if name == CONTENT_LENGTH {
                continue;
            }
            text.push_str(&name);
            text.push_str(": ");
            text.push_str(&sanitize(value));
            text.push_str("\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        Message::parse(text.as_bytes())
    }

    /// The response to send for a request that failed to parse or frame
    /// with `error` (§18.3: 400 for a bad request; 505, 416 or 513 where
    /// [`MessageError::response_status`] says), when enough of it is intact
    /// to address one: a request line (not ACK, which is never answered,
    /// §17.1.1.3), and Via, From, To, Call-ID and CSeq headers, copied
    /// leniently (§8.2.6). None otherwise — drop the message then.
    pub fn rejection(bytes: &[u8], error: &MessageError, to_tag: Option<&str>) -> Option<Message> {
        let mut bytes = bytes;
        while let Some(rest) = bytes.strip_prefix(b"\r\n") {
            bytes = rest;
        }
        let head_at = find_head_end(bytes, 0)?;
        let mut lines = split_lines(&bytes[..head_at]);
        let start = String::from_utf8_lossy(lines.next()?);
        let method = start.split(' ').next()?;
        if !is_token(method) || method == "ACK" {
            return None;
        }
        if start
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        {
            return None;
        }

        // Unfold and name the fields, keeping only what a response copies.
        let mut raw: Vec<(String, String)> = Vec::new();
        for line in lines {
            let line = String::from_utf8_lossy(line);
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = raw.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            raw.push((names::canonical(name.trim()).into_owned(), value.to_owned()));
        }
        let mut fields = Vec::new();
        for name in [VIA, FROM, TO, CALL_ID, CSEQ] {
            let before = fields.len();
            for (_, value) in raw.iter().filter(|(n, _)| n == name) {
                let value = sanitize(value);
                match split_list(&value) {
                    Ok(values) if name == VIA => {
                        fields.extend(values.into_iter().map(|v| Field::new(name, v)));
                    }
                    _ => fields.push(Field::new(name, value)),
                }
                if name != VIA {
                    break;
                }
            }
            if fields.len() == before {
                return None;
            }
        }
        let (status, reason) = error.response_status();
        Some(response_from(fields, status, reason, to_tag))
    }
}

/// A response with these fields, `Content-Length: 0`, and `to_tag` added
/// to a To without one.
fn response_from(
    mut fields: Vec<Field>,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Message {
    fields.push(Field::new(CONTENT_LENGTH, "0"));
    let mut response = Message {
        start: StartLine::Response {
            status,
            reason: sanitize(reason),
        },
        fields,
        body: Vec::new(),
    };
    if let Some(tag) = to_tag
        && response.to_tag().is_none()
    {
        response.set_to_tag(tag);
    }
    response
}
