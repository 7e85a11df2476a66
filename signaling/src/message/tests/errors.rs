//! Malformed inputs and the exact error each one gets.

use super::*;
use crate::message::MessageError;

/// A minimal valid request the cases below break one way each.
const BASE: &str = "\
INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1
From: <sip:alice@example.com>;tag=1
To: <sip:bob@example.com>
Call-ID: c1
CSeq: 1 INVITE
Max-Forwards: 70
Content-Length: 0

";

/// BASE with one line replaced (or removed, with an empty replacement).
fn with(line: &str, replacement: &str) -> Vec<u8> {
    let mut lines: Vec<&str> = BASE.split('\n').collect();
    let at = lines
        .iter()
        .position(|l| *l == line)
        .unwrap_or_else(|| panic!("no line {line:?}"));
    if replacement.is_empty() {
        lines.remove(at);
    } else {
        lines[at] = replacement;
    }
    wire(&lines.join("\n"))
}

fn start_line(line: &str, problem: &'static str) -> MessageError {
    MessageError::StartLine {
        line: line.to_owned(),
        problem,
    }
}

fn bad_uri(uri: &str, problem: &'static str) -> MessageError {
    MessageError::BadUri {
        uri: uri.to_owned(),
        problem,
    }
}

fn bad_header(name: &str, value: &str, problem: &'static str) -> MessageError {
    MessageError::BadHeader {
        name: name.to_owned(),
        value: value.to_owned(),
        problem,
    }
}

const REQUEST_LINE: &str = "INVITE sip:bob@example.com SIP/2.0";
const VIA: &str = "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1";
const FROM: &str = "From: <sip:alice@example.com>;tag=1";
const TO: &str = "To: <sip:bob@example.com>";
const CALL_ID: &str = "Call-ID: c1";
const CSEQ: &str = "CSeq: 1 INVITE";
const MAX_FORWARDS: &str = "Max-Forwards: 70";
const CONTENT_LENGTH: &str = "Content-Length: 0";
const EXPECTED_LINE: &str =
    "expected `Method SP Request-URI SP SIP/2.0` or `SIP/2.0 SP Status-Code SP Reason`";
const STATUS: &str = "status code is not three digits from 100 to 699";
const FORBIDDEN: &str = "white space, control byte or one of `<>\"` in the URI";

fn cases() -> Vec<(&'static str, Vec<u8>, MessageError)> {
    vec![
        ("empty", Vec::new(), MessageError::Empty),
        (
            "binary garbage",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            MessageError::Truncated,
        ),
        (
            "binary garbage with an empty line",
            b"\x16\x03\x01\r\n\r\n".to_vec(),
            MessageError::ControlInHeaders {
                byte: 0x16,
                offset: 0,
            },
        ),
        (
            "no empty line",
            wire("INVITE sip:a@b SIP/2.0\nVia: x\n"),
            MessageError::Truncated,
        ),
        (
            "only a blank line",
            b"\r\n\r\n".to_vec(),
            start_line("", "empty start line"),
        ),
        (
            "text garbage",
            wire("garbage\n\n"),
            start_line("garbage", EXPECTED_LINE),
        ),
        (
            "two spaces in the request line",
            with(REQUEST_LINE, "INVITE  sip:bob@example.com SIP/2.0"),
            start_line("INVITE  sip:bob@example.com SIP/2.0", EXPECTED_LINE),
        ),
        (
            "no version",
            with(REQUEST_LINE, "INVITE sip:bob@example.com"),
            start_line("INVITE sip:bob@example.com", EXPECTED_LINE),
        ),
        (
            "method not a token",
            with(REQUEST_LINE, "INV@ITE sip:bob@example.com SIP/2.0"),
            start_line(
                "INV@ITE sip:bob@example.com SIP/2.0",
                "the method is not a token",
            ),
        ),
        (
            "HTTP version",
            with(REQUEST_LINE, "INVITE sip:bob@example.com HTTP/1.1"),
            start_line(
                "INVITE sip:bob@example.com HTTP/1.1",
                "no SIP version at the end of the request line",
            ),
        ),
        (
            "bad request version",
            with(REQUEST_LINE, "INVITE sip:bob@example.com SIP/3.0"),
            MessageError::BadVersion {
                version: "SIP/3.0".to_owned(),
            },
        ),
        (
            "bad response version",
            with(REQUEST_LINE, "SIP/1.0 200 OK"),
            MessageError::BadVersion {
                version: "SIP/1.0".to_owned(),
            },
        ),
        (
            "status too low",
            with(REQUEST_LINE, "SIP/2.0 99 Low"),
            start_line("SIP/2.0 99 Low", STATUS),
        ),
        (
            "status too high",
            with(REQUEST_LINE, "SIP/2.0 700 High"),
            start_line("SIP/2.0 700 High", STATUS),
        ),
        (
            "status not digits",
            with(REQUEST_LINE, "SIP/2.0 2OO OK"),
            start_line("SIP/2.0 2OO OK", STATUS),
        ),
        (
            "status missing",
            with(REQUEST_LINE, "SIP/2.0"),
            start_line("SIP/2.0", STATUS),
        ),
        (
            "tel Request-URI",
            with(REQUEST_LINE, "INVITE tel:+15551234 SIP/2.0"),
            MessageError::UnsupportedUriScheme {
                uri: "tel:+15551234".to_owned(),
            },
        ),
        (
            "Request-URI without scheme",
            with(REQUEST_LINE, "INVITE bob SIP/2.0"),
            bad_uri("bob", "no URI scheme"),
        ),
        (
            "Request-URI with a bad port",
            with(REQUEST_LINE, "INVITE sip:bob@example.com:99999 SIP/2.0"),
            bad_uri("sip:bob@example.com:99999", "bad port"),
        ),
        (
            "Request-URI with an open IPv6 reference",
            with(REQUEST_LINE, "INVITE sip:bob@[2001:db8::1 SIP/2.0"),
            bad_uri("sip:bob@[2001:db8::1", "unterminated IPv6 reference"),
        ),
        (
            "Request-URI with a bad IPv6 reference",
            with(REQUEST_LINE, "INVITE sip:bob@[2001:db8::g] SIP/2.0"),
            bad_uri("sip:bob@[2001:db8::g]", "bad IPv6 reference"),
        ),
        (
            "Request-URI with an empty user",
            with(REQUEST_LINE, "INVITE sip:@example.com SIP/2.0"),
            bad_uri("sip:@example.com", "empty user part before `@`"),
        ),
        (
            "Request-URI without host",
            with(REQUEST_LINE, "INVITE sip: SIP/2.0"),
            bad_uri("sip:", "bad host"),
        ),
        (
            "Request-URI with a bad IPv4",
            with(REQUEST_LINE, "INVITE sip:bob@192.0.2.300 SIP/2.0"),
            bad_uri("sip:bob@192.0.2.300", "bad host"),
        ),
        (
            "Request-URI with a quote",
            with(REQUEST_LINE, "INVITE sip:bob\"@example.com SIP/2.0"),
            bad_uri("sip:bob\"@example.com", FORBIDDEN),
        ),
        (
            "missing Via",
            with(VIA, ""),
            MessageError::MissingHeader { name: "Via" },
        ),
        (
            "missing From",
            with(FROM, ""),
            MessageError::MissingHeader { name: "From" },
        ),
        (
            "missing To",
            with(TO, ""),
            MessageError::MissingHeader { name: "To" },
        ),
        (
            "missing Call-ID",
            with(CALL_ID, ""),
            MessageError::MissingHeader { name: "Call-ID" },
        ),
        (
            "missing CSeq",
            with(CSEQ, ""),
            MessageError::MissingHeader { name: "CSeq" },
        ),
        (
            "two Call-IDs",
            with(CALL_ID, "Call-ID: c1\ni: c2"),
            MessageError::DuplicateHeader { name: "Call-ID" },
        ),
        (
            "two To",
            with(TO, "To: <sip:bob@example.com>\nt: <sip:eve@example.com>"),
            MessageError::DuplicateHeader { name: "To" },
        ),
        (
            "two Max-Forwards",
            with(MAX_FORWARDS, "Max-Forwards: 70\nMax-Forwards: 70"),
            MessageError::DuplicateHeader {
                name: "Max-Forwards",
            },
        ),
        (
            "CSeq method mismatch",
            with(CSEQ, "CSeq: 1 BYE"),
            MessageError::CSeqMethodMismatch {
                method: "INVITE".to_owned(),
                cseq_method: "BYE".to_owned(),
            },
        ),
        (
            "CSeq method in lower case",
            with(CSEQ, "CSeq: 1 invite"),
            MessageError::CSeqMethodMismatch {
                method: "INVITE".to_owned(),
                cseq_method: "invite".to_owned(),
            },
        ),
        (
            "CSeq without number",
            with(CSEQ, "CSeq: INVITE"),
            bad_header("CSeq", "INVITE", "no sequence number"),
        ),
        (
            "CSeq over 32 bits",
            with(CSEQ, "CSeq: 4294967296 INVITE"),
            bad_header(
                "CSeq",
                "4294967296 INVITE",
                "sequence number does not fit 32 bits",
            ),
        ),
        (
            "CSeq without space",
            with(CSEQ, "CSeq: 1INVITE"),
            bad_header(
                "CSeq",
                "1INVITE",
                "no white space between number and method",
            ),
        ),
        (
            "CSeq without method",
            with(CSEQ, "CSeq: 1"),
            bad_header("CSeq", "1", "no white space between number and method"),
        ),
        (
            "Content-Length not numeric",
            with(CONTENT_LENGTH, "Content-Length: abc"),
            MessageError::BadContentLength {
                value: "abc".to_owned(),
            },
        ),
        (
            "Content-Length negative",
            with(CONTENT_LENGTH, "Content-Length: -5"),
            MessageError::BadContentLength {
                value: "-5".to_owned(),
            },
        ),
        (
            "Content-Length beyond usize",
            with(CONTENT_LENGTH, "Content-Length: 99999999999999999999999"),
            MessageError::BadContentLength {
                value: "99999999999999999999999".to_owned(),
            },
        ),
        (
            "Content-Length huge",
            with(CONTENT_LENGTH, "Content-Length: 4294967296"),
            MessageError::BodyShorterThanContentLength {
                content_length: 4_294_967_296,
                body: 0,
            },
        ),
        (
            "Content-Length with a space inside",
            with(CONTENT_LENGTH, "l: 1 0"),
            MessageError::BadContentLength {
                value: "1 0".to_owned(),
            },
        ),
        (
            "two Content-Lengths",
            with(CONTENT_LENGTH, "Content-Length: 0\nl: 0"),
            MessageError::DuplicateHeader {
                name: "Content-Length",
            },
        ),
        (
            "NUL in a header",
            with(CALL_ID, "Call-ID: c\u{0}1"),
            MessageError::ControlInHeaders {
                byte: 0,
                offset: BASE.find("Call-ID").unwrap()
                    + BASE[..BASE.find("Call-ID").unwrap()].matches('\n').count()
                    + 10,
            },
        ),
        (
            "bare LF inside a header",
            {
                let mut bytes = with(CALL_ID, "Call-ID: c1");
                let at = bytes.windows(2).position(|w| w == b"c1").unwrap() + 1;
                bytes.insert(at, b'\n');
                bytes
            },
            MessageError::ControlInHeaders {
                byte: b'\n',
                offset: BASE.find("Call-ID").unwrap()
                    + BASE[..BASE.find("Call-ID").unwrap()].matches('\n').count()
                    + 10,
            },
        ),
        (
            "not UTF-8",
            {
                let mut bytes = with(CALL_ID, "Call-ID: c1");
                let at = bytes.windows(2).position(|w| w == b"c1").unwrap();
                bytes[at] = 0xff;
                bytes
            },
            MessageError::NotUtf8Headers,
        ),
        (
            "header without colon",
            with(CALL_ID, "Call-ID c1"),
            MessageError::HeaderWithoutColon {
                line: "Call-ID c1".to_owned(),
            },
        ),
        (
            "header name with a space",
            with(CALL_ID, "Call ID: c1"),
            MessageError::BadHeaderName {
                name: "Call ID".to_owned(),
            },
        ),
        (
            "empty header name",
            with(CALL_ID, ": c1"),
            MessageError::BadHeaderName {
                name: String::new(),
            },
        ),
        (
            "continuation of the start line",
            with(VIA, " folded"),
            MessageError::OrphanContinuation {
                line: " folded".to_owned(),
            },
        ),
        (
            "Call-ID with a space",
            with(CALL_ID, "Call-ID: c 1"),
            bad_header("Call-ID", "c 1", "white space in a Call-ID (§25.1 callid)"),
        ),
        (
            "empty Call-ID",
            with(CALL_ID, "Call-ID:"),
            bad_header("Call-ID", "", "empty Call-ID"),
        ),
        (
            "Via without sent-by",
            with(VIA, "Via: SIP/2.0/UDP"),
            bad_header("Via", "SIP/2.0/UDP", "missing sent-by"),
        ),
        (
            "Via of another protocol",
            with(VIA, "Via: SIP/3.0/UDP h;branch=z9hG4bK1"),
            bad_header(
                "Via",
                "SIP/3.0/UDP h;branch=z9hG4bK1",
                "sent-protocol is not SIP/2.0",
            ),
        ),
        (
            "Via with a bad received",
            with(VIA, "Via: SIP/2.0/UDP h;branch=z9hG4bK1;received=nowhere"),
            bad_header(
                "Via",
                "SIP/2.0/UDP h;branch=z9hG4bK1;received=nowhere",
                "bad received address",
            ),
        ),
        (
            "Via with a bad rport",
            with(VIA, "Via: SIP/2.0/UDP h;rport=70000"),
            bad_header("Via", "SIP/2.0/UDP h;rport=70000", "bad rport"),
        ),
        (
            "Via with an empty rport",
            with(VIA, "Via: SIP/2.0/UDP h;rport="),
            bad_header(
                "Via",
                "SIP/2.0/UDP h;rport=",
                "parameter without a value after `=`",
            ),
        ),
        (
            "Via with an open IPv6 reference",
            with(VIA, "Via: SIP/2.0/UDP [2001:db8::1;branch=z9hG4bK1"),
            bad_header(
                "Via",
                "SIP/2.0/UDP [2001:db8::1;branch=z9hG4bK1",
                "bad IPv6 reference in sent-by",
            ),
        ),
        (
            "Via with trailing text",
            with(VIA, "Via: SIP/2.0/UDP h (comment)"),
            bad_header(
                "Via",
                "SIP/2.0/UDP h (comment)",
                "unexpected text after sent-by",
            ),
        ),
        (
            "second Via bad",
            with(VIA, "Via: SIP/2.0/UDP h;branch=z9hG4bK1, SIP/2.0/UDP"),
            bad_header("Via", "SIP/2.0/UDP", "missing sent-by"),
        ),
        (
            "empty Via element",
            with(VIA, "Via: SIP/2.0/UDP h;branch=z9hG4bK1,"),
            bad_header(
                "Via",
                "SIP/2.0/UDP h;branch=z9hG4bK1,",
                "empty list element",
            ),
        ),
        (
            "Route without brackets",
            with(MAX_FORWARDS, "Route: sip:p.example.com;lr"),
            bad_header(
                "Route",
                "sip:p.example.com;lr",
                "the URI is not in <...> (§20.30 name-addr)",
            ),
        ),
        (
            "Record-Route to a tel URI",
            with(MAX_FORWARDS, "Record-Route: <tel:+1555>"),
            bad_header("Record-Route", "<tel:+1555>", "not a sip: or sips: URI"),
        ),
        (
            "Route with an open bracket",
            with(MAX_FORWARDS, "Route: <sip:p.example.com;lr"),
            bad_header("Route", "<sip:p.example.com;lr", "unterminated <URI>"),
        ),
        (
            "From without closing bracket",
            with(FROM, "From: Alice <sip:alice@example.com;tag=1"),
            bad_header(
                "From",
                "Alice <sip:alice@example.com;tag=1",
                "missing `>` after the URI",
            ),
        ),
        (
            "From with an empty tag",
            with(FROM, "From: <sip:alice@example.com>;tag="),
            bad_header(
                "From",
                "<sip:alice@example.com>;tag=",
                "the tag is not a token",
            ),
        ),
        (
            "To with a display name but no brackets",
            with(TO, "To: Bob sip:bob@example.com"),
            bad_header(
                "To",
                "Bob sip:bob@example.com",
                "display name without <URI>",
            ),
        ),
        (
            "To without scheme",
            with(TO, "To: <bob>"),
            bad_header("To", "<bob>", "no URI scheme"),
        ),
        (
            "Max-Forwards not a number",
            with(MAX_FORWARDS, "Max-Forwards: seventy"),
            bad_header("Max-Forwards", "seventy", "not a decimal number (§20.22)"),
        ),
        (
            "Max-Forwards negative",
            with(MAX_FORWARDS, "Max-Forwards: -1"),
            bad_header("Max-Forwards", "-1", "not a decimal number (§20.22)"),
        ),
        (
            "body shorter than Content-Length",
            with(CONTENT_LENGTH, "Content-Length: 10"),
            MessageError::BodyShorterThanContentLength {
                content_length: 10,
                body: 0,
            },
        ),
    ]
}

#[test]
fn malformed_inputs_get_their_exact_error() {
    for (what, input, expected) in cases() {
        assert_eq!(Message::parse(&input), Err(expected), "{what}");
    }
}

/// Errors read as one line and quote at most an excerpt of the input.
#[test]
fn errors_are_one_line() {
    for (what, input, _) in cases() {
        let error = Message::parse(&input).unwrap_err().to_string();
        assert!(
            !error.contains('\n') && !error.contains('\r'),
            "{what}: {error}"
        );
    }
    let long = format!("INVITE sip:{}@example.com SIP/3.0", "a".repeat(500));
    let error = Message::parse(&with(REQUEST_LINE, &long)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "SIP version \"SIP/3.0\" is not supported: only SIP/2.0 (RFC 3261 §7.1)"
    );
    let error =
        Message::parse(&with(CALL_ID, &format!("Call ID{}: x", "b".repeat(500)))).unwrap_err();
    assert!(error.to_string().len() < 200, "{error}");
    assert_eq!(
        MessageError::MissingHeader { name: "Call-ID" }.to_string(),
        "missing mandatory header Call-ID (RFC 3261 §8.1.1)"
    );
}

#[test]
fn response_statuses() {
    assert_eq!(
        MessageError::BadVersion {
            version: String::new()
        }
        .response_status(),
        (505, "Version Not Supported")
    );
    assert_eq!(
        MessageError::UnsupportedUriScheme { uri: String::new() }.response_status(),
        (416, "Unsupported URI Scheme")
    );
    assert_eq!(
        MessageError::TooLarge { size: 1, max: 0 }.response_status(),
        (513, "Message Too Large")
    );
    assert_eq!(
        MessageError::Truncated.response_status(),
        (400, "Bad Request")
    );
}

/// The base itself is fine, and a response needs no Max-Forwards and may
/// carry any CSeq method.
#[test]
fn the_base_and_its_response_parse() {
    Message::parse(&wire(BASE)).unwrap();
    Message::parse(&with(MAX_FORWARDS, "")).unwrap();
    Message::parse(&with(REQUEST_LINE, "SIP/2.0 200 OK")).unwrap();
}
