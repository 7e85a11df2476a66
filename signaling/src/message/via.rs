//! The Via header (RFC 3261 §20.42, §18.2.1; RFC 3581): parsing one
//! `via-parm`, and writing it back after the proxy edits its parameters.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
};

use super::syntax::{is_token_char, is_ws, parse_port, quoted_end};

/// The top Via, as a proxy needs it (RFC 3261 §8.1.1.7, §18.2.1; RFC 3581).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Via {
    /// Transport of the sent-protocol, upper case: "UDP", "TCP", "TLS", …
    pub transport: String,
    /// sent-by host (name or IP literal, IPv6 without brackets), as written.
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    pub branch: Option<String>,
    pub received: Option<IpAddr>,
    /// None: no rport; Some(None): `;rport` without value; Some(Some(p)): `;rport=p`.
    pub rport: Option<Option<u16>>,
}

impl Via {
    /// The sent-by port, or the transport's default when absent: 5061 for
    /// TLS (RFC 3261 §19.1.2, §18.2.2), 5060 otherwise.
    pub fn port_or_default(&self) -> u16 {
        self.port
            .unwrap_or(if self.transport.eq_ignore_ascii_case("TLS") {
                5061
            } else {
                5060
            })
    }

    /// Whether the branch carries the RFC 3261 magic cookie (§8.1.1.7), so
    /// transactions can be matched by branch alone (§17.2.3).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch
            .as_deref()
            .is_some_and(|branch| branch.starts_with("z9hG4bK"))
    }
}

/// One Via value, with every parameter kept in order so an edit writes
/// back everything it did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ViaValue {
    transport: String,
    host: String,
    port: Option<u16>,
    params: Vec<(String, Option<String>)>,
}

impl ViaValue {
    /// Parses `sent-protocol LWS sent-by *( SEMI via-params )`, with the
    /// optional white space the grammar allows around `/`, `:`, `;` and
    /// `=` (§25.1 SLASH, COLON, SEMI, EQUAL).
    pub(super) fn parse(value: &str) -> Result<Self, &'static str> {
        let mut c = Cursor::new(value);
        c.skip_ws();
        if !c.take(is_token_char).eq_ignore_ascii_case("SIP") {
            return Err("sent-protocol is not SIP/2.0");
        }
        c.skip_ws();
        if !c.eat(b'/') {
            return Err("sent-protocol is not SIP/2.0");
        }
        c.skip_ws();
        if c.take(is_token_char) != "2.0" {
            return Err("sent-protocol is not SIP/2.0");
        }
        c.skip_ws();
        if !c.eat(b'/') {
            return Err("missing transport");
        }
        c.skip_ws();
        let transport = c.take(is_token_char).to_ascii_uppercase();
        if transport.is_empty() {
            return Err("missing transport");
        }
        if c.skip_ws() == 0 {
            return Err("missing sent-by");
        }

        let host = if c.eat(b'[') {
            let inside = c.take(|b| b != b']');
            if !c.eat(b']') || inside.parse::<Ipv6Addr>().is_err() {
                return Err("bad IPv6 reference in sent-by");
            }
            inside
        } else {
            let name = c.take(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if super::syntax::host_of(name).is_none() {
                return Err("bad sent-by host");
            }
            name
        };
        c.skip_ws();
        let port = if c.eat(b':') {
            c.skip_ws();
            Some(parse_port(c.take(|b| b.is_ascii_digit())).ok_or("bad sent-by port")?)
        } else {
            None
        };

        let mut params = Vec::new();
        loop {
            c.skip_ws();
            if c.at_end() {
                break;
            }
            if !c.eat(b';') {
                return Err("unexpected text after sent-by");
            }
            c.skip_ws();
            let name = c.take(is_token_char);
            if name.is_empty() {
                return Err("empty parameter name");
            }
            c.skip_ws();
            let value = if c.eat(b'=') {
                c.skip_ws();
                let value = if c.peek() == Some(b'"') {
                    c.take_quoted()
                        .ok_or("unterminated quoted parameter value")?
                } else {
                    c.take(|b| is_token_char(b) || matches!(b, b':' | b'[' | b']'))
                };
                if value.is_empty() {
                    return Err("parameter without a value after `=`");
                }
                Some(value.to_owned())
            } else {
                None
            };
            params.push((name.to_owned(), value));
        }

        let via = Self {
            transport,
            host: host.to_owned(),
            port,
            params,
        };
        // Validate what `summary` reads, so it never has to fail.
        if let Some(Some(received)) = via.param("received") {
            parse_received(received).ok_or("bad received address")?;
        }
        if let Some(Some(rport)) = via.param("rport") {
            parse_port(rport).ok_or("bad rport")?;
        }
        Ok(via)
    }

    /// The value of the first parameter named `name` (case-insensitive):
    /// None if absent, Some(None) if present without a value.
    fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub(super) fn summary(&self) -> Via {
        Via {
            transport: self.transport.clone(),
            host: self.host.clone(),
            port: self.port,
            branch: self.param("branch").flatten().map(str::to_owned),
            received: self.param("received").flatten().and_then(parse_received),
            rport: self.param("rport").map(|v| v.and_then(parse_port)),
        }
    }

    /// RFC 3261 §18.2.1 and RFC 3581 §4: record where the request really
    /// came from. `received` is added when the sent-by host is not the
    /// source address, or always when the client asked with `;rport`, which
    /// then gets the source port. Returns whether anything changed.
    pub(super) fn set_received(&mut self, addr: IpAddr, port: u16) -> bool {
        let addr = addr.to_canonical();
        let rport = self
            .params
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case("rport"));
        let host_is_source = self
            .host
            .parse::<IpAddr>()
            .is_ok_and(|host| host.to_canonical() == addr);
        if host_is_source && rport.is_none() {
            return false;
        }
        let received = self
            .params
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case("received"));
        let value = Some(addr.to_string());
        match (received, rport) {
            (Some(at), _) => self.params[at].1 = value,
            // RFC 3581 §4's example writes `received` just before `rport`.
            (None, Some(at)) => self.params.insert(at, ("received".to_owned(), value)),
            (None, None) => self.params.push(("received".to_owned(), value)),
        }
        if let Some(at) = self
            .params
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case("rport"))
        {
            self.params[at].1 = Some(port.to_string());
        }
        true
    }
}

impl fmt::Display for ViaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} ", self.transport)?;
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for (name, value) in &self.params {
            match value {
                Some(value) => write!(f, ";{name}={value}")?,
                None => write!(f, ";{name}")?,
            }
        }
        Ok(())
    }
}

/// `received = IPv4address / IPv6address` (§20.42); a bracketed IPv6
/// reference is tolerated, as some implementations write one.
fn parse_received(text: &str) -> Option<IpAddr> {
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// A byte cursor over a `&str` that only stops on ASCII bytes.
struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Skips SP/HTAB, returning how many.
    fn skip_ws(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// The run of ASCII bytes matching `pred` (a non-ASCII byte ends it).
    fn take(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii() && pred(b)) {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn take_quoted(&mut self) -> Option<&'a str> {
        let rest = &self.text[self.pos..];
        let len = quoted_end(rest)?;
        self.pos += len;
        Some(&rest[..len])
    }
}
