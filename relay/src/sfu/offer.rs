//! Checks an SDP offer before the WebRTC stack sees it, and says what is wrong in our words.
//!
//! The stack's own parser errors carry its internals (a parser position printed as a pointer
//! value, which would help an attacker defeat address-space randomisation), and some malformed
//! offers made older versions panic or answer with an SDP no browser accepts. So the offer is
//! checked here first, for what a WHIP or WHEP answer depends on: that it is SDP at all, that
//! its media lines have distinct mids (RFC 8843 §7.2.1), and that each RTX payload type names
//! one primary payload type that its media line offers (RFC 4588 §8.6). Whatever fails comes
//! back as one sentence naming the problem; the stack's own errors are never shown. The answer
//! is checked too ([`check_answer`]): it may use only payload types the offer lists.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// How many media lines an offer may have: far more than a machine or a viewer needs, and a
/// bound on the work an offer can ask for.
pub const MAX_MEDIA_LINES: usize = 64;

/// One media line as far as the checks need it.
#[derive(Default)]
struct Section<'a> {
    /// The payload types of its `m=` line.
    formats: BTreeSet<u16>,
    /// RTX payload type → the primaries its `a=fmtp:... apt=` lines name.
    apt: BTreeMap<u16, BTreeSet<u16>>,
    mid: Option<&'a str>,
}

/// `Ok` if the offer may go to the WebRTC stack, else what is wrong with it.
pub fn check(offer: &str) -> Result<(), String> {
    let mut lines = offer.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        None => return Err("not an SDP offer: the body is empty".into()),
        Some("v=0") => {}
        Some(_) => return Err("not an SDP offer: it must begin with the line v=0".into()),
    }
    let mut sections: Vec<Section<'_>> = Vec::new();
    for line in lines {
        if let Some(m) = line.strip_prefix("m=") {
            if sections.len() == MAX_MEDIA_LINES {
                return Err(format!("the offer has more than {MAX_MEDIA_LINES} media lines"));
            }
            // m=<media> <port> <proto> <fmt> ...; the formats of RTP profiles are payload types.
            let formats = m.split_whitespace().skip(3).filter_map(|f| f.parse().ok()).collect();
            sections.push(Section { formats, ..Section::default() });
            continue;
        }
        let Some(section) = sections.last_mut() else { continue };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            if let Some(first) = section.mid {
                return Err(format!("an m-line has two mids ({first}, {})", mid.trim()));
            }
            section.mid = Some(mid.trim());
        } else if let Some(fmtp) = line.strip_prefix("a=fmtp:") {
            let (pt, params) = fmtp.split_once(' ').unwrap_or((fmtp, ""));
            let Ok(pt) = pt.parse::<u16>() else { continue };
            let apt =
                params.split(';').filter_map(|p| p.trim().strip_prefix("apt=")).filter_map(|v| v.parse::<u16>().ok());
            section.apt.entry(pt).or_default().extend(apt);
        }
    }
    if sections.is_empty() {
        return Err("not an SDP offer: it has no media line (m=)".into());
    }
    let mut mids = HashSet::new();
    for section in &sections {
        if let Some(mid) = section.mid
            && !mids.insert(mid)
        {
            return Err(format!("two m-lines share mid {mid}"));
        }
        for (pt, primaries) in &section.apt {
            let mut named = primaries.iter();
            match (named.next(), named.next()) {
                (Some(primary), None) if !section.formats.contains(primary) => {
                    return Err(format!(
                        "rtx payload type {pt} names primary {primary}, which its m-line does not offer"
                    ));
                }
                (Some(_), Some(_)) => {
                    let list = primaries.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
                    return Err(format!("rtx payload type {pt} names two primaries ({list})"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `Ok` if every media line `answer` accepts uses only payload types its offered line lists
/// (RFC 3264 §6.1), else what went wrong. The WebRTC stack can answer an inconsistent offer
/// (formats whose parameters it cannot tell apart) with payload types of its own; no browser
/// should have to make sense of that, so such an offer is refused instead.
pub fn check_answer(offer: &str, answer: &str) -> Result<(), String> {
    let offered = media_lines(offer);
    for (mid, line) in media_lines(answer) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 3 || fields[1] == "0" || !fields[2].contains("RTP") {
            continue;
        }
        let listed: Vec<&str> = offered
            .iter()
            .find(|(m, _)| *m == mid)
            .map(|(_, l)| l.split_whitespace().skip(3).collect())
            .unwrap_or_default();
        if let Some(pt) = fields[3..].iter().find(|pt| !listed.contains(pt)) {
            return Err(format!(
                "the formats offered for mid {mid} are inconsistent: an answer would need payload type {pt}, which the offer does not list"
            ));
        }
    }
    Ok(())
}

/// Each media line of `sdp` (`m=...`) with its mid (`""` when it has none).
fn media_lines(sdp: &str) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            out.push(("", m));
        } else if let (Some(mid), Some(last)) = (line.strip_prefix("a=mid:"), out.last_mut()) {
            last.0 = mid.trim();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser's offer, cut to what the checks read.
    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
        a=rtpmap:98 H264/90000\r\na=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
        a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n";

    #[test]
    fn a_browser_offer_passes() {
        assert_eq!(check(OFFER), Ok(()));
    }

    #[test]
    fn an_answer_uses_the_offered_formats() {
        let answer = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:0\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";
        assert_eq!(check_answer(OFFER, answer), Ok(()));
        // A rejected line's payload type 0 is no format of the answer's.
        assert_eq!(check_answer(OFFER, &answer.replace("9 UDP/TLS/RTP/SAVPF 96 97", "0 UDP/TLS/RTP/SAVPF 0")), Ok(()));
        assert_eq!(
            check_answer(OFFER, &answer.replace("96 97", "96 105")),
            Err("the formats offered for mid 0 are inconsistent: an answer would need payload type 105, which the offer does not list".into())
        );
    }

    #[test]
    fn each_problem_is_named() {
        let cases = [
            ("", "not an SDP offer: the body is empty"),
            ("  \r\n", "not an SDP offer: the body is empty"),
            ("hello", "not an SDP offer: it must begin with the line v=0"),
            ("v=0\r\ns=-\r\n", "not an SDP offer: it has no media line (m=)"),
        ];
        for (offer, want) in cases {
            assert_eq!(check(offer), Err(want.to_owned()), "{offer:?}");
        }
        let conflicting = OFFER.replace("a=fmtp:97 apt=96\r\n", "a=fmtp:97 apt=96\r\na=fmtp:97 apt=98\r\n");
        assert_eq!(check(&conflicting), Err("rtx payload type 97 names two primaries (96, 98)".into()));
        let duplicate = OFFER.replace("a=mid:1", "a=mid:0");
        assert_eq!(check(&duplicate), Err("two m-lines share mid 0".into()));
        let orphan = OFFER.replace("SAVPF 96 97 98 99", "SAVPF 97");
        assert_eq!(check(&orphan), Err("rtx payload type 97 names primary 96, which its m-line does not offer".into()));
        let two_mids = OFFER.replace("a=mid:1", "a=mid:1\r\na=mid:2");
        assert_eq!(check(&two_mids), Err("an m-line has two mids (1, 2)".into()));
        let many = format!("{OFFER}{}", "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n".repeat(MAX_MEDIA_LINES));
        assert_eq!(check(&many), Err(format!("the offer has more than {MAX_MEDIA_LINES} media lines")));
    }
}
