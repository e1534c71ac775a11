//! The layer-4 listener's relay under real sessions: a multi-megabyte message crosses it byte
//! for byte, and a client that half-closes after QUIT still gets the engine's answer.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Fleet;
use crate::mail::{Client, until};

/// 4 MiB of body through `tcp_listen`: the relay's writes to the engine block while the
/// engine takes its time, so leftovers are kept and written in order; the message arrives
/// unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_megabyte_message_crosses_the_layer4_relay_byte_for_byte() {
    let f = Fleet::start("", 100).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut c = Client::from_stream(sock.connect(f.tcp).await.unwrap());
    c.expect("220").await;
    let mut rng = fastrand::Rng::with_seed(19);
    let mut body = String::new();
    let mut n = 0u64;
    while body.len() < 4 << 20 {
        let len = rng.usize(1..200);
        let text: String = (0..len).map(|_| rng.alphanumeric()).collect();
        body.push_str(&format!("{n:08} {text}\r\n"));
        n += 1;
    }
    let message = format!("Subject: big through layer 4\r\n\r\n{body}");
    let r = c
        .mail("a@sender.example", &["bob@acme.example"], &message)
        .await;
    assert!(r.starts_with("250"), "{r}");
    assert!(until(Duration::from_secs(30), || f.acme.messages().len() == 1).await);
    let got = f.acme.messages()[0].data.clone();
    let delivered = got.split_once("\r\n\r\n").expect("headers and body").1;
    assert_eq!(delivered.len(), body.len());
    assert!(delivered == body, "the body arrived byte for byte");
}

/// The client sends QUIT and shuts down its writing half at once: the engine still answers
/// `221` and the client reads it before the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_quit_gets_the_answer() {
    let f = Fleet::start("", 100).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(f.tcp).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        let mut b = [0u8; 512];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "closed before the banner");
        got.extend_from_slice(&b[..n]);
    }
    assert!(
        got.starts_with(b"220 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"QUIT\r\n").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the relay ends once the engine has closed")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("221 "), "{text}");
}
