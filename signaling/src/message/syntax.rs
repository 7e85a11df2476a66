//! The pieces of RFC 3261 §25 grammar the message layer needs: tokens,
//! quoted strings, comma-separated lists, `name-addr` / `addr-spec` with
//! their header parameters, and SIP URIs.
//!
//! Why not rsip's tokenizers: on internet input rsip 0.4 gets URIs wrong
//! in ways a proxy cannot live with — `sip:first.last@host` loses its user
//! (the user part stops at the first `.`), `[2001:db8::1]` hosts fail,
//! `;transport=xyz` or `;method=FOO` fail the whole URI, `sip:a@b>junk`
//! and `garbage` are accepted, and in a Via `host ; branch=x` silently
//! drops the branch. So we split with the grammar below and produce
//! rsip's types ([`rsip::Uri`] with its [`rsip::Host`], [`rsip::Auth`] and
//! [`rsip::Param`], the latter classified by rsip itself). The original
//! text is always kept for output; rsip's `Display` is never used to
//! write a message (it drops IPv6 brackets).
//!
//! Every function here works on `&str` and only slices at positions of
//! ASCII bytes it found, so no input can split a character.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::{MessageError, excerpt};

/// `token` characters (RFC 3261 §25.1).
pub(super) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Linear white space inside a header value after unfolding: SP / HTAB.
pub(super) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn trim_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Given `s` starting with `"`, the index just past the closing quote of
/// the quoted-string (backslash escapes honoured, §25.1), if closed.
pub(super) fn quoted_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// Splits a header value at the commas that separate list elements
/// (§7.3.1): not inside a quoted string nor inside `<...>`. Elements are
/// trimmed; an empty element or an unclosed quote or bracket is an error,
/// since the grammar has none (`1#element`).
pub(super) fn split_list(value: &str) -> Result<Vec<&str>, &'static str> {
    let bytes = value.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_angle = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' if !in_angle => match quoted_end(&value[i..]) {
                Some(len) => {
                    i += len;
                    continue;
                }
                None => return Err("unterminated quoted string"),
            },
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                parts.push(trim_ws(&value[start..i]));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if in_angle {
        return Err("unterminated <URI>");
    }
    parts.push(trim_ws(&value[start.min(value.len())..]));
    if parts.iter().any(|part| part.is_empty()) {
        return Err("empty list element");
    }
    Ok(parts)
}

/// A header parameter: `;name` or `;name=value` (value as written, quotes
/// included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GenericParam<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

/// Finds a parameter by name, case-insensitively (§19.1.4, §20).
pub(super) fn find_param<'p, 'a>(
    params: &'p [GenericParam<'a>],
    name: &str,
) -> Option<&'p GenericParam<'a>> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Parses `*( SEMI generic-param )` with the whitespace the grammar allows
/// around `;` and `=` (§25.1 SEMI, EQUAL). A value is a quoted string or a
/// run of characters other than white space and `;,"<>`, which covers
/// tokens, hosts and IPv6 references.
pub(super) fn parse_params(s: &str) -> Result<Vec<GenericParam<'_>>, &'static str> {
    let mut params = Vec::new();
    let mut rest = s.trim_start_matches([' ', '\t']);
    while !rest.is_empty() {
        let Some(after_semi) = rest.strip_prefix(';') else {
            return Err("expected `;` before a parameter");
        };
        let after_semi = after_semi.trim_start_matches([' ', '\t']);
        let name_len = after_semi
            .bytes()
            .position(|b| !is_token_char(b))
            .unwrap_or(after_semi.len());
        if name_len == 0 {
            return Err("empty parameter name");
        }
        let name = &after_semi[..name_len];
        let after_name = after_semi[name_len..].trim_start_matches([' ', '\t']);
        let (value, after_value) = match after_name.strip_prefix('=') {
            None => (None, after_name),
            Some(v) => {
                let v = v.trim_start_matches([' ', '\t']);
                let len = if v.starts_with('"') {
                    quoted_end(v).ok_or("unterminated quoted parameter value")?
                } else {
                    v.bytes()
                        .position(|b| is_ws(b) || matches!(b, b';' | b',' | b'"' | b'<' | b'>'))
                        .unwrap_or(v.len())
                };
                (Some(&v[..len]), &v[len..])
            }
        };
        params.push(GenericParam { name, value });
        rest = after_value.trim_start_matches([' ', '\t']);
    }
    Ok(params)
}

/// A `name-addr` or `addr-spec` followed by header parameters (§20.10,
/// §20.20, §20.30, §20.34, §20.39).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NameAddr<'a> {
    /// Display name as written (quotes included), if any.
    pub display: Option<&'a str>,
    /// The URI text, without the angle brackets.
    pub uri: &'a str,
    /// Whether the URI was written in `<...>`.
    pub bracketed: bool,
    /// Everything after the URI (and its `>`): the header parameters.
    pub params_text: &'a str,
    pub params: Vec<GenericParam<'a>>,
}

/// Parses a `name-addr` / `addr-spec` value. Without angle brackets the
/// URI ends at the first `;`: what follows are header parameters, not URI
/// parameters (§20.10).
pub(super) fn parse_name_addr(value: &str) -> Result<NameAddr<'_>, &'static str> {
    let value = trim_ws(value);
    if value.is_empty() {
        return Err("empty value");
    }
    let bytes = value.as_bytes();
    // The first `<` outside a quoted display name opens the URI.
    let mut lt = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += quoted_end(&value[i..]).ok_or("unterminated quoted display name")?;
                continue;
            }
            b'<' => {
                lt = Some(i);
                break;
            }
            b';' => break,
            _ => i += 1,
        }
    }
    match lt {
        Some(lt) => {
            let display = trim_ws(&value[..lt]);
            let display = if display.is_empty() {
                None
            } else {
                check_display_name(display)?;
                Some(display)
            };
            let after_lt = &value[lt + 1..];
            let gt = after_lt.find('>').ok_or("missing `>` after the URI")?;
            let uri = &after_lt[..gt];
            if uri.is_empty() {
                return Err("empty <URI>");
            }
            let params_text = &after_lt[gt + 1..];
            let params = parse_params(params_text)?;
            Ok(NameAddr {
                display,
                uri,
                bracketed: true,
                params_text,
                params,
            })
        }
        None => {
            if value.starts_with('"') {
                return Err("display name without <URI>");
            }
            let end = value.find(';').unwrap_or(value.len());
            let uri = trim_ws(&value[..end]);
            if uri.is_empty() {
                return Err("empty URI");
            }
            if uri.bytes().any(is_ws) {
                return Err("display name without <URI>");
            }
            let params_text = &value[end..];
            let params = parse_params(params_text)?;
            Ok(NameAddr {
                display: None,
                uri,
                bracketed: false,
                params_text,
                params,
            })
        }
    }
}

/// `display-name = *(token LWS) / quoted-string` (§25.1).
fn check_display_name(display: &str) -> Result<(), &'static str> {
    if display.starts_with('"') {
        if quoted_end(display) == Some(display.len()) {
            return Ok(());
        }
        return Err("text after the quoted display name");
    }
    // Many user agents put non-ASCII letters in unquoted display names;
    // tolerate them, but nothing that has a meaning in the grammar.
    if display
        .bytes()
        .all(|b| is_token_char(b) || is_ws(b) || b >= 0x80)
    {
        Ok(())
    } else {
        Err("bad display name")
    }
}

/// `scheme ":" ...` with a valid scheme (§25.1 absoluteURI) and no byte a
/// URI cannot contain: the check for URIs the proxy only copies (From,
/// To), which may be any scheme (`tel:` included). Non-ASCII is tolerated.
pub(super) fn check_any_uri(text: &str) -> Result<(), &'static str> {
    let (scheme, rest) = text.split_once(':').ok_or("no URI scheme")?;
    if !is_scheme(scheme) {
        return Err("bad URI scheme");
    }
    if rest.is_empty() {
        return Err("nothing after the URI scheme");
    }
    if text.bytes().any(forbidden_in_uri) {
        return Err("white space, control byte or one of `<>\"` in the URI");
    }
    Ok(())
}

/// `scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

fn forbidden_in_uri(b: u8) -> bool {
    b <= b' ' || b == 0x7f || matches!(b, b'<' | b'>' | b'"')
}

/// A SIP or SIPS URI (§19.1.1), parsed into rsip's model.
///
/// `sip:user:password@host:port;uri-parameters?headers`. The user part
/// ends at the first `@` (it may contain `;`, `?` and `.`, §25.1
/// user-unreserved); the host is a name, an IPv4 literal or a bracketed
/// IPv6 reference. URI headers (`?...`) are accepted but not represented:
/// rsip 0.4 has no field for them (they stay in the text we keep).
pub(super) fn parse_sip_uri(text: &str) -> Result<rsip::Uri, MessageError> {
    let bad = |problem| MessageError::BadUri {
        uri: excerpt(text),
        problem,
    };
    if text.is_empty() {
        return Err(bad("empty URI"));
    }
    let Some((scheme, rest)) = text.split_once(':') else {
        return Err(bad("no URI scheme"));
    };
    let scheme = if scheme.eq_ignore_ascii_case("sip") {
        rsip::Scheme::Sip
    } else if scheme.eq_ignore_ascii_case("sips") {
        rsip::Scheme::Sips
    } else if is_scheme(scheme) {
        return Err(MessageError::UnsupportedUriScheme { uri: excerpt(text) });
    } else {
        return Err(bad("no URI scheme"));
    };
    if text.bytes().any(forbidden_in_uri) {
        return Err(bad("white space, control byte or one of `<>\"` in the URI"));
    }

    let (auth, host_part) = match rest.split_once('@') {
        Some((userinfo, host_part)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password.to_owned())),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(bad("empty user part before `@`"));
            }
            let auth = rsip::Auth {
                user: user.to_owned(),
                password,
            };
            (Some(auth), host_part)
        }
        None => (None, rest),
    };

    let (hostport, params_text) = {
        let end = host_part.find([';', '?']).unwrap_or(host_part.len());
        (&host_part[..end], &host_part[end..])
    };
    let (host, port_text) = if let Some(v6) = hostport.strip_prefix('[') {
        let close = v6
            .find(']')
            .ok_or_else(|| bad("unterminated IPv6 reference"))?;
        let addr: Ipv6Addr = v6[..close].parse().map_err(|_| bad("bad IPv6 reference"))?;
        let after = &v6[close + 1..];
        let port_text = match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return Err(bad("text after the IPv6 reference")),
        };
        (rsip::Host::IpAddr(IpAddr::V6(addr)), port_text)
    } else {
        let (name, port_text) = match hostport.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (hostport, None),
        };
        (host_of(name).ok_or_else(|| bad("bad host"))?, port_text)
    };
    let port = match port_text {
        None => None,
        Some(port) => Some(rsip::Port::from(
            parse_port(port).ok_or_else(|| bad("bad port"))?,
        )),
    };

    let params_end = params_text.find('?').unwrap_or(params_text.len());
    let mut params = Vec::new();
    for param in params_text[..params_end].split(';').skip(1) {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (param, None),
        };
        if name.is_empty() {
            return Err(bad("empty URI parameter"));
        }
        // rsip classifies the parameter; what it refuses (an unknown
        // transport, an extension method) is still a valid parameter.
        let param = rsip::Param::try_from((name, value))
            .unwrap_or_else(|_| rsip::Param::Other(name.into(), value.map(Into::into)));
        params.push(param);
    }

    Ok(rsip::Uri {
        scheme: Some(scheme),
        auth,
        host_with_port: rsip::HostWithPort { host, port },
        params,
        headers: Vec::new(),
    })
}

/// A host name or IPv4 literal (§25.1 hostname / IPv4address). A name made
/// of digits and dots only must be an IPv4 address.
pub(super) fn host_of(name: &str) -> Option<rsip::Host> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return None;
    }
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let v4: Ipv4Addr = name.parse().ok()?;
        return Some(rsip::Host::IpAddr(IpAddr::V4(v4)));
    }
    Some(rsip::Host::Domain(name.into()))
}

/// `port = 1*DIGIT`, within u16.
pub(super) fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Writes an [`rsip::Uri`] as SIP text. rsip's own `Display` writes an
/// IPv6 host without brackets (`sip:2001:db8::1:5060`), which is another
/// URI; this one brackets it.
pub fn format_uri(uri: &rsip::Uri) -> String {
    use std::fmt::Write as _;

    let mut out = String::new();
    match &uri.scheme {
        Some(rsip::Scheme::Sip) | None => out.push_str("sip:"),
        Some(rsip::Scheme::Sips) => out.push_str("sips:"),
        Some(rsip::Scheme::Other(scheme)) => {
            out.push_str(scheme);
            out.push(':');
        }
    }
    if let Some(auth) = &uri.auth {
        out.push_str(&auth.user);
        if let Some(password) = &auth.password {
            out.push(':');
            out.push_str(password);
        }
        out.push('@');
    }
    match &uri.host_with_port.host {
        rsip::Host::IpAddr(IpAddr::V6(v6)) => {
            let _ = write!(out, "[{v6}]");
        }
        host => {
            let _ = write!(out, "{host}");
        }
    }
    if let Some(port) = &uri.host_with_port.port {
        let _ = write!(out, ":{port}");
    }
    for param in &uri.params {
        let _ = write!(out, "{param}");
    }
    out
}
