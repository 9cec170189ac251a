use super::*;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// h2 asks the stream whether it takes vectored writes and, when it does,
/// hands a frame header and its payload over in one call: one `writev`
/// where the defaults made it two `sendto`s.
#[tokio::test]
async fn writes_a_header_and_a_payload_in_one_vectored_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap());
    let (client, accepted) = tokio::join!(client, listener.accept());
    let mut peer = client.unwrap();
    let connections = Connections::new(&ConnectionFlags {
        max_connections: 4,
        idle_connection_timeout_seconds: 0,
    });
    let mut tracked = connections.admit(accepted.unwrap().0).expect("admitted");
    assert!(tracked.is_write_vectored());

    let (header, payload) = (b"frame header ".as_slice(), b"and its payload".as_slice());
    let written = tracked
        .write_vectored(&[io::IoSlice::new(header), io::IoSlice::new(payload)])
        .await
        .unwrap();
    assert_eq!(
        written,
        header.len() + payload.len(),
        "both buffers in one call"
    );
    drop(tracked);
    let mut received = Vec::new();
    peer.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, b"frame header and its payload");
}
