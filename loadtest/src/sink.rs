//! `loadtest sink`: the least work any push of a pack can cost the server's
//! machine, as a process of its own.
//!
//! It takes one TCP connection at a time, writes what arrives over the file
//! it wrote last time (in aligned 2 MiB blocks, as segd's recycled upload
//! does), cuts the file at the end of the stream, makes it durable and
//! answers with the byte count. No HTTP/2, no checksum, no structural
//! checks, no mapping. `loadtest run --swap-raw-tcp` sends the `--pack` files
//! to it instead of `Admin/PushSnapshot`, so the readers of a segd on the same
//! machine can be timed under the bare receive-and-write of a push: what is
//! left of a swap's cost to them once everything segd adds is taken away.
//! With `--discard` it writes nothing, which splits that cost between the
//! receive and the write.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::SinkArgs;

/// The size of every write but the last: segd's `FILE_BLOCK_BYTES`.
const BLOCK_BYTES: usize = segd::pack::file_blocks::FILE_BLOCK_BYTES;

pub fn run(args: &SinkArgs) -> Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("binding --listen {}", args.listen))?;
    // The process is one thread, so this is the nice value of all its work,
    // as `--admin-nice` is of segd's push path.
    segd::background::lower_this_threads_priority(args.nice);
    let file = args.file.as_deref();
    let writes = file.map_or("discarding every stream".into(), |file| {
        format!("writing {}", file.display())
    });
    println!(
        "sink: listening on {}, {writes}, at nice {}",
        listener.local_addr()?,
        args.nice
    );
    serve(listener, file)
}

/// Answers connections one at a time, until accepting fails; `file: None`
/// reads each stream to its end and writes nothing.
pub fn serve(listener: TcpListener, file: Option<&Path>) -> Result<()> {
    let mut block = vec![0u8; BLOCK_BYTES];
    for connection in listener.incoming() {
        let mut connection = connection.context("accepting a connection")?;
        let received = match file {
            Some(file) => receive(&mut connection, file, &mut block),
            None => discard(&mut connection, &mut block),
        };
        match received {
            Ok(bytes) => connection.write_all(&bytes.to_le_bytes())?,
            // The sender sees the connection close without an answer.
            Err(error) => eprintln!("sink: {error:#}"),
        }
    }
    Ok(())
}

fn discard(connection: &mut TcpStream, block: &mut [u8]) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let filled = fill(connection, block).context("reading the stream")?;
        total += filled as u64;
        if filled < block.len() {
            return Ok(total);
        }
    }
}

/// Writes the stream over `path` from byte 0, cuts and syncs it; the bytes received.
fn receive(connection: &mut TcpStream, path: &Path, block: &mut [u8]) -> Result<u64> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut total = 0u64;
    loop {
        let filled = fill(connection, block).context("reading the stream")?;
        file.write_all(&block[..filled])
            .with_context(|| format!("writing {}", path.display()))?;
        total += filled as u64;
        if filled < block.len() {
            break;
        }
    }
    finish(&file, total).with_context(|| format!("syncing {}", path.display()))?;
    Ok(total)
}

/// Reads until `block` is full or the stream ends; the bytes read.
fn fill(connection: &mut impl Read, block: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < block.len() {
        match connection.read(&mut block[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn finish(file: &File, total: u64) -> io::Result<()> {
    file.set_len(total)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;

    fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> u64 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(bytes).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).unwrap();
        u64::from_le_bytes(answer)
    }

    #[test]
    fn each_stream_replaces_the_file_whole_and_is_answered_with_its_length() {
        let dir = std::env::temp_dir().join(format!("loadtest-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("upload");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = file.clone();
        std::thread::spawn(move || serve(listener, Some(&target)));
        // Longer than two blocks, then shorter than one: the second stream
        // must not leave the first one's tail behind.
        let long: Vec<u8> = (0..2 * BLOCK_BYTES + 12_345).map(|i| i as u8).collect();
        assert_eq!(send(addr, &long), long.len() as u64);
        assert_eq!(std::fs::read(&file).unwrap(), long);
        let short = b"a much shorter second version".to_vec();
        assert_eq!(send(addr, &short), short.len() as u64);
        assert_eq!(std::fs::read(&file).unwrap(), short);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_discarding_sink_answers_with_the_length_and_writes_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, None));
        let bytes = vec![7u8; BLOCK_BYTES + 1];
        assert_eq!(send(addr, &bytes), bytes.len() as u64);
        assert_eq!(send(addr, b""), 0);
    }
}
