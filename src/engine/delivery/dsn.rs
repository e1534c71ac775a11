//! Delivery status notifications (RFC 3464 `multipart/report`) for recipients that failed
//! permanently or expired. Never for the null sender and never for a DSN (no loops).

use std::fmt::Write;

use crate::smtp::date::rfc5322;
use crate::store::Envelope;

/// One failed recipient.
pub struct Failure<'a> {
    pub rcpt: &'a str,
    /// The server's reply or our reason, e.g. `550 5.1.1 user unknown` or `expired after 5d`.
    pub diagnostic: &'a str,
    /// Whether the text came from the remote server (`smtp;`) or from us.
    pub remote: bool,
}

/// The enhanced status code in a reply text, or a default.
fn status_of(diag: &str) -> String {
    diag.split_whitespace()
        .nth(1)
        .filter(|s| {
            let p: Vec<&str> = s.split('.').collect();
            p.len() == 3
                && p.iter()
                    .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|s| s.to_owned())
        .unwrap_or_else(|| "5.0.0".into())
}

/// Builds the DSN message for `original` (its headers are attached, not its body).
pub fn build(
    hostname: &str,
    original: &Envelope,
    original_message: &[u8],
    failures: &[Failure<'_>],
    now: u64,
) -> Vec<u8> {
    let boundary = format!("{}/{}", original.id, hostname);
    let headers_end = original_message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(original_message.len().min(64 * 1024));
    let mut m = String::new();
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         \r\n",
        to = original.from,
        date = rfc5322(now),
        id = original.id,
    );
    for f in failures {
        let _ = write!(m, "<{}>: {}\r\n", f.rcpt, f.diagnostic);
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Maildistiller-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        id = original.id,
        arrival = rfc5322(original.received),
    );
    for f in failures {
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.rcpt,
            status_of(f.diagnostic)
        );
        if f.remote {
            let _ = write!(m, "Diagnostic-Code: smtp; {}\r\n", f.diagnostic);
        }
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(&original_message[..headers_end]);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_each_failed_recipient_with_its_status() {
        let env = Envelope {
            received: 1_700_000_000,
            from: "alice@sender.example".into(),
            rcpts: vec!["bob@acme.example".into()],
            ..crate::store::test_envelope(1)
        };
        let msg = b"Subject: hi\r\nFrom: alice@sender.example\r\n\r\nsecret body\r\n";
        let dsn = build(
            "mx.example.net",
            &env,
            msg,
            &[Failure {
                rcpt: "bob@acme.example",
                diagnostic: "550 5.1.1 no such user",
                remote: true,
            }],
            1_700_000_100,
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("To: <alice@sender.example>"));
        assert!(text.contains("multipart/report; report-type=delivery-status"));
        assert!(text.contains(
            "Final-Recipient: rfc822; bob@acme.example\r\nAction: failed\r\nStatus: 5.1.1"
        ));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(text.contains("Subject: hi"), "original headers attached");
        assert!(!text.contains("secret body"), "original body not returned");
        assert_eq!(status_of("expired after 5d"), "5.0.0");
    }
}
