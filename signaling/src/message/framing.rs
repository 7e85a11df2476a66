//! Cutting messages out of what a transport delivers (RFC 3261 §18.3):
//! over a stream, Content-Length is mandatory and says where each message
//! ends; a datagram is one message whose body Content-Length may shorten.
//! Both use [`content_length`], which [`Message::parse`] uses too, so the
//! framer and the parser can never disagree about where a body ends.
//!
//! [`Message::parse`]: super::Message::parse

use super::error::{MessageError, excerpt_bytes};

/// What a stream or datagram yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// One complete SIP message's bytes (start line to end of body).
    Message(Vec<u8>),
    /// RFC 5626 §3.5.1 keepalive: CRLFCRLF "ping" (answer with a CRLF "pong").
    Ping,
    /// A single CRLF "pong" (or stray CRLF between messages): ignore.
    Pong,
}

const CRLF: &[u8] = b"\r\n";
const CRLFCRLF: &[u8] = b"\r\n\r\n";

/// TCP: accumulate bytes, cut messages by Content-Length (mandatory on
/// streams, RFC 3261 §18.3).
///
/// CRLFs before a start line are keepalives (RFC 5626 §3.5.1; RFC 3261
/// §7.5 says to ignore them): a double CRLF is a [`Frame::Ping`], a single
/// one a [`Frame::Pong`]. A stream that cannot be framed any more — no or
/// an unreadable Content-Length, a message over the limit, bytes that
/// cannot start a SIP message — yields one error and nothing after it:
/// the caller closes the connection.
///
/// Work per byte received is constant: the start line and the search for
/// the end of the headers resume where the previous call stopped, so a
/// peer dribbling a byte at a time costs no more than one sending in bulk.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max_message: usize,
    /// Bytes of the current start line already checked.
    line_scanned: usize,
    /// The current start line is complete and looks like SIP.
    line_ok: bool,
    /// Where the search for the end of the current headers resumes.
    head_scanned: usize,
    failed: bool,
}

impl StreamFramer {
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_message,
            line_scanned: 0,
            line_ok: false,
            head_scanned: 0,
            failed: false,
        }
    }

    /// Appends received bytes (ignored once the stream has failed).
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the stream has failed (an error was returned).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Next complete frame; Err when the stream is unrecoverable (no
    /// Content-Length, oversize, garbage) — the caller closes the
    /// connection. After an error it returns None forever.
    pub fn next_frame(&mut self) -> Option<Result<Frame, MessageError>> {
        if self.failed {
            return None;
        }
        match self.try_next() {
            Ok(frame) => frame.map(Ok),
            Err(error) => {
                self.failed = true;
                self.buf = Vec::new();
                Some(Err(error))
            }
        }
    }

    fn try_next(&mut self) -> Result<Option<Frame>, MessageError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        if self.buf.len() < CRLFCRLF.len() && CRLFCRLF.starts_with(&self.buf) {
            // "\r", "\r\n" or "\r\n\r": a ping, a pong or a stray CR; wait.
            return Ok(None);
        }
        if self.buf.starts_with(CRLFCRLF) {
            self.consume(CRLFCRLF.len());
            return Ok(Some(Frame::Ping));
        }
        if self.buf.starts_with(CRLF) {
            self.consume(CRLF.len());
            return Ok(Some(Frame::Pong));
        }

        self.check_start_line()?;
        let Some(head_at) = find_head_end(&self.buf, self.head_scanned) else {
            if self.buf.len() > self.max_message {
                return Err(MessageError::TooLarge {
                    size: self.buf.len(),
                    max: self.max_message,
                });
            }
            self.head_scanned = self.buf.len().saturating_sub(CRLFCRLF.len() - 1);
            return Ok(None);
        };
        self.head_scanned = head_at;
        let content_length =
            content_length(&self.buf[..head_at])?.ok_or(MessageError::NoContentLength)?;
        let total = (head_at + CRLFCRLF.len()).saturating_add(content_length);
        if total > self.max_message {
            return Err(MessageError::TooLarge {
                size: total,
                max: self.max_message,
            });
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let message = self.buf[..total].to_vec();
        self.consume(total);
        Ok(Some(Frame::Message(message)))
    }

    /// Drops `n` bytes from the front; the next message starts fresh.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        self.line_scanned = 0;
        self.line_ok = false;
        self.head_scanned = 0;
    }

    /// Refuses a stream whose first line cannot be a SIP start line: a
    /// control byte in it (a TLS handshake, binary junk, bare LF line
    /// ends), or a complete line without `SIP/` at the start (response) or
    /// in its last word (request) — an HTTP request, say. Detecting this
    /// early spares buffering up to the size limit.
    fn check_start_line(&mut self) -> Result<(), MessageError> {
        if self.line_ok {
            return Ok(());
        }
        let not_sip = |buf: &[u8]| MessageError::NotSip {
            excerpt: excerpt_bytes(buf),
        };
        let mut i = self.line_scanned;
        while let Some(&b) = self.buf.get(i) {
            if b == b'\r' {
                match self.buf.get(i + 1) {
                    None => break,
                    Some(b'\n') => {
                        let line = &self.buf[..i];
                        let last_word = line.rsplit(|&b| b == b' ').next().unwrap_or(line);
                        if !starts_with_ignore_case(line, b"SIP/")
                            && !starts_with_ignore_case(last_word, b"SIP/")
                        {
                            return Err(not_sip(&self.buf));
                        }
                        self.line_ok = true;
                        return Ok(());
                    }
                    Some(_) => return Err(not_sip(&self.buf)),
                }
            }
            if is_control(b) {
                return Err(not_sip(&self.buf));
            }
            i += 1;
        }
        self.line_scanned = i;
        Ok(())
    }
}

/// UDP: one datagram is one message (or a keepalive).
///
/// A datagram of CRLFs only is a keepalive: exactly CRLFCRLF is a
/// [`Frame::Ping`] (RFC 5626 uses STUN on UDP, but user agents send
/// CRLFCRLF there too; whether to answer is the transport's choice), any
/// other run of CR/LF — or an empty datagram, another common NAT
/// keepalive — is a [`Frame::Pong`] to ignore. CRLFs before a start line
/// are skipped (§7.5). With a Content-Length the body is cut to it and
/// must be complete (§18.3); without one it is the rest of the datagram.
pub fn datagram(bytes: &[u8], max_message: usize) -> Result<Frame, MessageError> {
    if bytes.len() > max_message {
        return Err(MessageError::TooLarge {
            size: bytes.len(),
            max: max_message,
        });
    }
    if bytes.iter().all(|&b| b == b'\r' || b == b'\n') {
        return Ok(if bytes == CRLFCRLF {
            Frame::Ping
        } else {
            Frame::Pong
        });
    }
    let mut message = bytes;
    while let Some(rest) = message.strip_prefix(CRLF) {
        message = rest;
    }
    let end = message_end(message)?;
    Ok(Frame::Message(message[..end].to_vec()))
}

/// Where a message that starts at byte 0 of `bytes` ends: after its
/// Content-Length bytes of body, or at the end of `bytes` without one.
pub(super) fn message_end(bytes: &[u8]) -> Result<usize, MessageError> {
    let head_at = find_head_end(bytes, 0).ok_or(MessageError::Truncated)?;
    let body_start = head_at + CRLFCRLF.len();
    let available = bytes.len() - body_start;
    match content_length(&bytes[..head_at])? {
        None => Ok(bytes.len()),
        Some(content_length) if content_length > available => {
            Err(MessageError::BodyShorterThanContentLength {
                content_length,
                body: available,
            })
        }
        Some(content_length) => Ok(body_start + content_length),
    }
}

/// Index of the CRLFCRLF that ends the headers, searching from `from`.
pub(super) fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    // Only an LF can be the second byte of a match: jump between LFs.
    let mut at = from;
    while let Some(lf) = buf.get(at + 1..)?.iter().position(|&b| b == b'\n') {
        let start = at + lf;
        if buf.get(start..start + CRLFCRLF.len()) == Some(CRLFCRLF) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// The Content-Length of a message head (the bytes before its CRLFCRLF;
/// the start line is skipped), compact `l` and folded lines understood.
/// Works on bytes and ignores lines it cannot read, so that a header the
/// parser will refuse later (one not UTF-8, say) does not stop framing;
/// but a Content-Length that is not one decimal number, or two of them,
/// cannot frame the stream and is an error.
pub(super) fn content_length(head: &[u8]) -> Result<Option<usize>, MessageError> {
    let mut found: Option<usize> = None;
    let mut current: Option<Vec<u8>> = None;
    let mut finish = |value: Option<Vec<u8>>| -> Result<(), MessageError> {
        let Some(value) = value else {
            return Ok(());
        };
        if found.is_some() {
            return Err(MessageError::DuplicateHeader {
                name: "Content-Length",
            });
        }
        found = Some(parse_content_length(&value)?);
        Ok(())
    };
    for line in split_lines(head).skip(1) {
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(value) = current.as_mut() {
                value.push(b' ');
                value.extend_from_slice(line);
            }
            continue;
        }
        finish(current.take())?;
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = trim_bytes(&line[..colon]);
            if name.eq_ignore_ascii_case(b"Content-Length") || name.eq_ignore_ascii_case(b"l") {
                current = Some(line[colon + 1..].to_vec());
            }
        }
    }
    finish(current.take())?;
    Ok(found)
}

fn parse_content_length(value: &[u8]) -> Result<usize, MessageError> {
    let digits = trim_bytes(value);
    let bad = || MessageError::BadContentLength {
        value: excerpt_bytes(digits),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    digits.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or_else(bad)
    })
}

/// Lines separated by CRLF.
pub(super) fn split_lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(head);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut crlf = None;
        let mut i = 1;
        while i < current.len() {
            if current[i] == b'\n' && current[i - 1] == b'\r' {
                crlf = Some(i - 1);
                break;
            }
            i += 1;
        }
        match crlf {
            Some(at) => {
                rest = Some(&current[at + CRLF.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn trim_bytes(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |at| at + 1);
    &bytes[start..end.max(start)]
}

/// Control bytes, which no header line may contain (HTAB aside; §25.1).
pub(super) fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
}
