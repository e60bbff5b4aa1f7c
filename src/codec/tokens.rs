//! JSON Web Tokens stored decoded (envelope flag bit 2, `session.codec.tokens`).
//!
//! A JWT is three base64url segments joined by dots. Deflate finds little to share between
//! base64 texts (the same JSON encodes to different characters at each alignment), and pays
//! about 6 bits for each character of a signature's 8-bit bytes. Decoded, the headers and
//! payloads are plain JSON that deflate shares across tokens and attributes, and the signature
//! is its bytes. A signed-in user's access, refresh and id tokens shrink by about a third.
//!
//! In the body (before compression), every token whose segments decode and encode back to the
//! same text is replaced by `ESC TOKEN len₁ len₂ len₃ bytes₁ bytes₂ bytes₃` (lengths as LEB128),
//! and every `ESC` byte of the rest by `ESC LITERAL`. `ESC` is 0xC1, the one byte MessagePack
//! never uses as a type, so it is rare in a body.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const ESC: u8 = 0xC1;
const LITERAL: u8 = 0x00;
const TOKEN: u8 = 0x01;

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The three segments of a token starting at `body[start..]` (which starts with `eyJ`, a JSON
/// object's first bytes in base64), decoded; `None` if it is not one that encodes back to
/// the same text. With the length of its text.
fn token_at(body: &[u8], start: usize) -> Option<([Vec<u8>; 3], usize)> {
    let mut at = start;
    let mut segments: [Vec<u8>; 3] = Default::default();
    for (i, segment) in segments.iter_mut().enumerate() {
        if i > 0 {
            if body.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let end = at + body[at..].iter().take_while(|b| is_base64url(**b)).count();
        if end == at {
            return None;
        }
        let text = &body[at..end];
        *segment = URL_SAFE_NO_PAD.decode(text).ok()?;
        if URL_SAFE_NO_PAD.encode(&*segment).as_bytes() != text {
            return None;
        }
        at = end;
    }
    Some((segments, at - start))
}

fn push_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = u8::try_from(n & 0x7f).unwrap_or(0x7f);
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_len(packed: &[u8], at: &mut usize) -> Option<usize> {
    let mut n: usize = 0;
    for shift in (0..usize::BITS).step_by(7) {
        let byte = *packed.get(*at)?;
        *at += 1;
        n |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// `body` with its tokens decoded; `None` if it holds none (then it is stored as it is).
pub(crate) fn pack(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut copied, mut at, mut found) = (0, 0, false);
    while at < body.len() {
        let Some(offset) = body[at..].windows(3).position(|w| w == b"eyJ") else {
            break;
        };
        let start = at + offset;
        match token_at(body, start) {
            Some((segments, len)) => {
                escape(&mut out, &body[copied..start]);
                out.extend_from_slice(&[ESC, TOKEN]);
                for segment in &segments {
                    push_len(&mut out, segment.len());
                }
                for segment in &segments {
                    out.extend_from_slice(segment);
                }
                found = true;
                at = start + len;
                copied = at;
            }
            // Not a token: past this run of base64url characters, so a long run of
            // "eyJ…" is scanned once, not once per occurrence.
            None => {
                at = start
                    + body[start..]
                        .iter()
                        .take_while(|b| is_base64url(**b))
                        .count()
                        .max(1);
            }
        }
    }
    if !found {
        return None;
    }
    escape(&mut out, &body[copied..]);
    Some(out)
}

fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.split_inclusive(|b| *b == ESC) {
        out.extend_from_slice(chunk);
        if chunk.last() == Some(&ESC) {
            out.push(LITERAL);
        }
    }
}

/// The body [`pack`] made `packed` from; `None` if `packed` is malformed or the body would be
/// longer than `max` bytes.
pub(crate) fn unpack(packed: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(packed.len().saturating_mul(2).min(max));
    let mut at = 0;
    while at < packed.len() {
        let run = packed[at..]
            .iter()
            .position(|b| *b == ESC)
            .unwrap_or(packed.len() - at);
        out.extend_from_slice(&packed[at..at + run]);
        at += run;
        if at == packed.len() {
            break;
        }
        match *packed.get(at + 1)? {
            LITERAL => {
                out.push(ESC);
                at += 2;
            }
            TOKEN => {
                at += 2;
                let lens = [
                    read_len(packed, &mut at)?,
                    read_len(packed, &mut at)?,
                    read_len(packed, &mut at)?,
                ];
                for (i, len) in lens.into_iter().enumerate() {
                    let segment = packed.get(at..at.checked_add(len)?)?;
                    at += len;
                    if i > 0 {
                        out.push(b'.');
                    }
                    if out.len().saturating_add(len.div_ceil(3) * 4) > max {
                        return None;
                    }
                    out.extend_from_slice(URL_SAFE_NO_PAD.encode(segment).as_bytes());
                }
            }
            _ => return None,
        }
        if out.len() > max {
            return None;
        }
    }
    (out.len() <= max).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        let part = |s: &[u8]| URL_SAFE_NO_PAD.encode(s);
        format!(
            "{}.{}.{}",
            part(br#"{"alg":"RS256","typ":"JWT"}"#),
            part(payload.as_bytes()),
            part(&[7u8; 256])
        )
    }

    #[test]
    fn tokens_go_back_as_they_were() {
        let a = token(r#"{"sub":"ann","scope":["a","b"]}"#);
        let b = token(r#"{"sub":"bob"}"#);
        let body = format!("\u{c1}x{a}\"and{b}.eyJ not a token eyJ\u{c1}").into_bytes();
        let packed = pack(&body).expect("tokens found");
        assert!(packed.len() < body.len());
        assert_eq!(unpack(&packed, 1 << 20).unwrap(), body);
        assert!(unpack(&packed, body.len() - 1).is_none(), "the bound holds");
    }

    #[test]
    fn texts_that_do_not_encode_back_are_left_alone() {
        // A last character with bits that a canonical encoder would not set.
        let body = b"eyJhIjoxfQ.eyJhIjoxfR.c2ln".to_vec();
        assert!(pack(&body).is_none());
        assert!(pack(b"no token here").is_none());
        assert!(pack(b"eyJ").is_none());
    }

    #[test]
    fn a_long_run_of_near_tokens_is_scanned_once() {
        // 1.2 MB of "eyJ": scanned once it takes milliseconds; once per occurrence (as
        // before) it took minutes, on every save of a session holding such a string.
        let body = "eyJ".repeat(400_000).into_bytes();
        assert!(pack(&body).is_none());
    }

    #[test]
    fn malformed_packed_bodies_are_refused_not_panicked_on() {
        for packed in [
            &[ESC][..],
            &[ESC, 7],
            &[ESC, TOKEN, 0x80],
            &[ESC, TOKEN, 5, 0, 0, 1],
            &[
                ESC, TOKEN, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(unpack(packed, 1 << 20).is_none(), "{packed:?}");
        }
    }
}
