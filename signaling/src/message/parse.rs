//! From bytes to a validated [`Message`] (RFC 3261 §7, §8.1.1, §8.2.2).

use super::{
    CALL_ID, CONTENT_LENGTH, CSEQ, FROM, Field, MAX_FORWARDS, Message, MessageError, Method,
    RECORD_ROUTE, ROUTE, StartLine, TO, VIA, ViaValue,
    error::excerpt,
    framing::{find_head_end, is_control, message_end},
    names,
    syntax::{
        check_any_uri, find_param, is_token, parse_name_addr, parse_sip_uri, split_list, trim_ws,
    },
};

impl Message {
    /// Parse one message (from `Frame::Message`). Requires the mandatory
    /// headers of RFC 3261 §8.1.1 for requests (To, From, CSeq, Call-ID,
    /// Via; Max-Forwards may be absent — treated as 70) and
    /// Via/From/To/CSeq/Call-ID for responses; CSeq method must match a
    /// request's method. A body longer than Content-Length is cut to it
    /// (§18.3); without Content-Length the body is everything after the
    /// empty line.
    pub fn parse(bytes: &[u8]) -> Result<Message, MessageError> {
        if bytes.is_empty() {
            return Err(MessageError::Empty);
        }
        let head_at = find_head_end(bytes, 0).ok_or(MessageError::Truncated)?;
        let head = &bytes[..head_at];
        check_controls(head)?;
        let head = std::str::from_utf8(head).map_err(|_| MessageError::NotUtf8Headers)?;
        let end = message_end(bytes)?;
        let body = bytes.get(head_at + 4..end).unwrap_or_default().to_vec();

        let mut lines = head.split("\r\n");
        let start = parse_start_line(lines.next().unwrap_or_default())?;
        let fields = parse_fields(lines)?;
        let mut message = Message {
            start,
            fields,
            body,
        };
        message.validate()?;
        message.sync_content_length();
        Ok(message)
    }

    /// Checks the headers a proxy relies on (see the module documentation).
    fn validate(&self) -> Result<(), MessageError> {
        let to = self.single(TO)?;
        let from = self.single(FROM)?;
        let cseq = self.single(CSEQ)?;
        let call_id = self.single(CALL_ID)?;
        if self.via_count() == 0 {
            return Err(MessageError::MissingHeader { name: VIA });
        }

        for (name, value) in [(TO, to), (FROM, from)] {
            check_address(value).map_err(|problem| bad_header(name, value, problem))?;
        }
        if call_id.bytes().any(|b| b == b' ' || b == b'\t') {
            return Err(bad_header(
                CALL_ID,
                call_id,
                "white space in a Call-ID (§25.1 callid)",
            ));
        }
        if call_id.is_empty() {
            return Err(bad_header(CALL_ID, call_id, "empty Call-ID"));
        }
        let (_, cseq_method) =
            parse_cseq(cseq).map_err(|problem| bad_header(CSEQ, cseq, problem))?;
        if let StartLine::Request { method_name, .. } = &self.start
            && cseq_method != method_name
        {
            return Err(MessageError::CSeqMethodMismatch {
                method: excerpt(method_name),
                cseq_method: excerpt(cseq_method),
            });
        }
        for value in self.values(VIA) {
            ViaValue::parse(value).map_err(|problem| bad_header(VIA, value, problem))?;
        }
        if let Some(max_forwards) = self.optional_single(MAX_FORWARDS)? {
            let valid = !max_forwards.is_empty()
                && max_forwards.bytes().all(|b| b.is_ascii_digit())
                && max_forwards.parse::<u32>().is_ok();
            if !valid {
                return Err(bad_header(
                    MAX_FORWARDS,
                    max_forwards,
                    "not a decimal number (§20.22)",
                ));
            }
        }
        for name in [ROUTE, RECORD_ROUTE] {
            for value in self.values(name) {
                check_route(value).map_err(|problem| bad_header(name, value, problem))?;
            }
        }
        Ok(())
    }

    /// The one value of a header that must appear exactly once.
    fn single(&self, name: &'static str) -> Result<&str, MessageError> {
        self.optional_single(name)?
            .ok_or(MessageError::MissingHeader { name })
    }

    /// The value of a header that may appear at most once.
    fn optional_single(&self, name: &'static str) -> Result<Option<&str>, MessageError> {
        let mut values = self.values(name);
        let first = values.next();
        if values.next().is_some() {
            return Err(MessageError::DuplicateHeader { name });
        }
        Ok(first)
    }

    /// Makes the one Content-Length field say the body's length, adding it
    /// at the end if there is none.
    pub(super) fn sync_content_length(&mut self) {
        let length = self.body.len().to_string();
        let mut seen = false;
        self.fields.retain_mut(|field| {
            if field.name != CONTENT_LENGTH {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            field.value.clone_from(&length);
            true
        });
        if !seen {
            self.fields.push(Field::new(CONTENT_LENGTH, length));
        }
    }
}

fn bad_header(name: &str, value: &str, problem: &'static str) -> MessageError {
    MessageError::BadHeader {
        name: name.to_owned(),
        value: excerpt(value),
        problem,
    }
}

/// Control bytes are refused anywhere in the header section; CR and LF
/// only as a CRLF pair ending a line (§7, §25.1).
fn check_controls(head: &[u8]) -> Result<(), MessageError> {
    let mut i = 0;
    while let Some(&byte) = head.get(i) {
        if byte == b'\r' && head.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        if is_control(byte) {
            return Err(MessageError::ControlInHeaders { byte, offset: i });
        }
        i += 1;
    }
    Ok(())
}

/// `Request-Line = Method SP Request-URI SP SIP-Version` (§7.1) or
/// `Status-Line = SIP-Version SP Status-Code SP Reason-Phrase` (§7.2).
/// Exactly one SP between the parts: the grammar has no other white space
/// there.
pub(super) fn parse_start_line(line: &str) -> Result<StartLine, MessageError> {
    let bad = |problem| MessageError::StartLine {
        line: excerpt(line),
        problem,
    };
    if line.is_empty() {
        return Err(bad("empty start line"));
    }
    let is_version = |s: &str| s.eq_ignore_ascii_case("SIP/2.0");
    let looks_like_version = |s: &str| s.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));

    if looks_like_version(line) {
        let (version, rest) = line.split_once(' ').unwrap_or((line, ""));
        if !is_version(version) {
            return Err(MessageError::BadVersion {
                version: excerpt(version),
            });
        }
        // Some servers omit the SP before an empty reason phrase.
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let status = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
            .then(|| code.parse::<u16>().ok())
            .flatten()
            .filter(|status| (100..=699).contains(status))
            .ok_or_else(|| bad("status code is not three digits from 100 to 699"))?;
        return Ok(StartLine::Response {
            status,
            reason: reason.to_owned(),
        });
    }

    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "expected `Method SP Request-URI SP SIP/2.0` or `SIP/2.0 SP Status-Code SP Reason`",
        ));
    };
    if !is_token(method) {
        return Err(bad("the method is not a token"));
    }
    if !is_version(version) {
        if looks_like_version(version) {
            return Err(MessageError::BadVersion {
                version: excerpt(version),
            });
        }
        return Err(bad("no SIP version at the end of the request line"));
    }
    let parsed = parse_sip_uri(uri)?;
    Ok(StartLine::Request {
        method: Method::from_token(method),
        method_name: method.to_owned(),
        uri: parsed,
        uri_text: uri.to_owned(),
    })
}

/// Header lines to fields: unfolds continuation lines (§7.3.1), names the
/// field by its full name (§7.3.3), splits comma-joined Via / Route /
/// Record-Route values.
fn parse_fields<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<Field>, MessageError> {
    let mut fields: Vec<Field> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let Some(last) = fields.last_mut() else {
                return Err(MessageError::OrphanContinuation {
                    line: excerpt(line),
                });
            };
            let more = trim_ws(line);
            if !more.is_empty() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(more);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(MessageError::HeaderWithoutColon {
                line: excerpt(line),
            });
        };
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(MessageError::BadHeaderName {
                name: excerpt(name),
            });
        }
        fields.push(Field::new(&names::canonical(name), trim_ws(value)));
    }

    let mut split = Vec::with_capacity(fields.len());
    for field in fields {
        if names::is_list(&field.name) {
            let values = split_list(&field.value)
                .map_err(|problem| bad_header(&field.name, &field.value, problem))?;
            split.extend(
                values
                    .into_iter()
                    .map(|value| Field::new(&field.name, value)),
            );
        } else {
            split.push(field);
        }
    }
    Ok(split)
}

/// `CSeq = 1*DIGIT LWS Method` (§20.16); the number fits 32 bits (§8.1.1.5).
pub(super) fn parse_cseq(value: &str) -> Result<(u32, &str), &'static str> {
    let value = trim_ws(value);
    let digits_end = value
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, rest) = value.split_at(digits_end);
    if digits.is_empty() {
        return Err("no sequence number");
    }
    let number = digits
        .parse::<u32>()
        .map_err(|_| "sequence number does not fit 32 bits")?;
    let method = rest.trim_start_matches([' ', '\t']);
    if method.len() == rest.len() {
        return Err("no white space between number and method");
    }
    if !is_token(method) {
        return Err("the method is not a token");
    }
    Ok((number, method))
}

/// From / To: a name-addr or addr-spec (§20.20, §20.39) with any URI
/// scheme, and a tag, if any, that is a token (§19.3).
fn check_address(value: &str) -> Result<(), &'static str> {
    let name_addr = parse_name_addr(value)?;
    check_any_uri(name_addr.uri)?;
    if let Some(tag) = find_param(&name_addr.params, "tag")
        && !tag.value.is_some_and(is_token)
    {
        return Err("the tag is not a token");
    }
    Ok(())
}

/// Route / Record-Route: `name-addr *( SEMI rr-param )` (§20.30, §20.34)
/// with a SIP URI, which the proxy routes on (§16.4, §16.12).
fn check_route(value: &str) -> Result<(), &'static str> {
    let name_addr = parse_name_addr(value)?;
    if !name_addr.bracketed {
        return Err("the URI is not in <...> (§20.30 name-addr)");
    }
    match parse_sip_uri(name_addr.uri) {
        Ok(_) => Ok(()),
        Err(MessageError::BadUri { problem, .. }) => Err(problem),
        Err(_) => Err("not a sip: or sips: URI"),
    }
}
