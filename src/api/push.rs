//! Receiving a `PushSnapshot` stream without holding it in memory.
//!
//! One push at a time: a second one while a push is received or verified is
//! refused with `RESOURCE_EXHAUSTED` at once (batch jobs retry), so pushes
//! never stack up in memory or on disk. Chunks are written to a staged file
//! in the packs directory as they arrive, by an upload thread below the
//! query path's priority; the header is verified as soon as it is complete
//! (a stream that is no pack is refused after its first bytes) and the footer
//! checksum as the bytes pass, so a valid header followed by a gigabyte of
//! zeros is refused at its end without ever being read back. Per push,
//! memory holds at most `UPLOAD_QUEUE_CHUNKS` + 2 chunks and the header
//! bytes, whatever the size; a chunk's bytes are the decode buffer's own
//! (`Bytes`), queued without a copy. The catalog then verifies the staged file whole
//! (`Catalog::push_staged`).

use prost::bytes::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use crate::api::outcomes::Refusal;
use crate::pacing::BytePacer;
use crate::pack::stream_check::FooterCheck;
use crate::pack::{self, PackError};
use crate::proto::SnapshotChunk;
use crate::store::catalog::{CatalogError, StagedFile, UploadWriter};

/// A header that is still incomplete after this many bytes is refused.
const MAX_HEADER_PREFIX_BYTES: usize = 64 << 10;

/// Admits one push at a time.
pub struct PushGate {
    running: Semaphore,
}

impl Default for PushGate {
    fn default() -> Self {
        Self {
            running: Semaphore::new(1),
        }
    }
}

impl PushGate {
    /// The right to push until the permit is dropped, or `RESOURCE_EXHAUSTED`.
    pub fn try_enter(&self) -> Result<SemaphorePermit<'_>, Status> {
        self.running.try_acquire().map_err(|_| {
            Status::resource_exhausted(
                "snapshot: another push is being received or verified; one push at a time, retry when it finishes",
            )
        })
    }
}

/// A refused upload: what the metrics count and the answer.
pub struct UploadRefused {
    pub refusal: Refusal,
    pub status: Status,
}

impl UploadRefused {
    fn new(refusal: Refusal, status: Status) -> Self {
        Self { refusal, status }
    }

    fn invalid_pack(error: PackError) -> Self {
        Self::new(
            Refusal::InvalidPack,
            Status::from(CatalogError::Pack(error)),
        )
    }

    fn storage(staged: &StagedFile, error: std::io::Error) -> Self {
        let error = CatalogError::Io {
            context: format!("write upload {}", staged.path().display()),
            source: error,
        };
        Self::new(Refusal::Storage, Status::from(error))
    }
}

/// How large a push may be and how fast it is taken in.
#[derive(Debug, Clone, Copy)]
pub struct PushLimits {
    /// `--max-push-bytes`.
    pub max_bytes: u64,
    /// `--push-mib-per-second` in bytes; 0 = unpaced.
    pub bytes_per_second: u64,
}

impl From<&crate::settings::LimitSettings> for PushLimits {
    fn from(settings: &crate::settings::LimitSettings) -> Self {
        Self {
            max_bytes: settings.max_push_bytes,
            bytes_per_second: settings.push_mib_per_second.saturating_mul(1 << 20),
        }
    }
}

/// What a complete upload brought.
pub struct Upload {
    pub staged: StagedFile,
    pub allow_older_version: bool,
}

/// How a push stream ended.
pub enum Received {
    /// The whole pack is in the staged file, for the catalog to verify.
    Upload(Upload),
    /// The header names the version already served: the rest of the stream
    /// was not read (nor written, nor verified) and the staged file removed.
    Unchanged(pack::PackHeader),
}

/// Chunks received but not yet written: the most a slow writer lets pile up
/// before the receive waits (and HTTP/2 flow control holds the client back).
const UPLOAD_QUEUE_CHUNKS: usize = 4;

/// Streams `chunks` into `staged`, refusing early what cannot be a pack, and
/// anything over `limits.max_bytes`. On a refusal the staged file is removed.
/// As soon as the header is complete, `is_served` is asked whether its pack
/// and version are the ones served: a no-op re-push then stops there, so it
/// costs the readers nothing but its first chunk.
///
/// The request task only decodes chunks, checks the header and counts
/// bytes; writing them to the file and the whole-file checksum run on an
/// upload thread at the push's lower priority (`crate::background`), fed
/// through a queue of [`UPLOAD_QUEUE_CHUNKS`]. On a busy box the writer then
/// gets the CPU the readers leave, the queue fills and the receive waits:
/// the upload slows down instead of the readers (BENCHMARKS.md, "Swaps,
/// third session": the upload on the tokio workers was what readers waited
/// behind during a 1.2 GB push). The writer also holds to
/// `limits.bytes_per_second`, which paces the receive the same way
/// (`crate::pacing`).
pub async fn receive(
    chunks: &mut Streaming<SnapshotChunk>,
    mut staged: StagedFile,
    limits: PushLimits,
    is_served: impl Fn(&pack::PackHeader) -> bool,
) -> Result<Received, UploadRefused> {
    let file = staged.take_writer().expect("a new upload has its writer");
    let (queue, queued) = mpsc::channel::<Bytes>(UPLOAD_QUEUE_CHUNKS);
    let pacer = BytePacer::new(limits.bytes_per_second);
    let writer = crate::background::spawn_deprioritised("segd-upload", move || {
        write_upload(file, queued, pacer)
    })
    .map_err(|error| UploadRefused::storage(&staged, error))?;
    let streamed = stream_chunks(chunks, &queue, limits.max_bytes, is_served).await;
    // Closing the queue ends the writer; its result is awaited on every path,
    // so no write to the staged file outlives the receive.
    drop(queue);
    let written = writer.await.and_then(|written| written);
    let (header, allow_older_version) = match streamed {
        Ok(Streamed::Complete {
            header,
            allow_older_version,
        }) => (header, allow_older_version),
        Ok(Streamed::Unchanged(header)) => return Ok(Received::Unchanged(header)),
        Ok(Streamed::WriterStopped) => {
            let error = written
                .err()
                .unwrap_or_else(|| std::io::Error::other("the upload writer stopped"));
            return Err(UploadRefused::storage(&staged, error));
        }
        Err(refused) => return Err(refused),
    };
    let footer = written.map_err(|error| UploadRefused::storage(&staged, error))?;
    if footer.total_bytes() == 0 {
        return Err(UploadRefused::new(
            Refusal::EmptyStream,
            Status::invalid_argument("snapshot: empty stream, no pack file sent"),
        ));
    }
    header.finish().map_err(UploadRefused::invalid_pack)?;
    footer.finish().map_err(UploadRefused::invalid_pack)?;
    Ok(Received::Upload(Upload {
        staged,
        allow_older_version,
    }))
}

/// How the request side of an upload ended.
enum Streamed {
    /// Every chunk was queued for the writer.
    Complete {
        header: HeaderCheck,
        allow_older_version: bool,
    },
    /// The header names the version already served.
    Unchanged(pack::PackHeader),
    /// The writer closed its end of the queue: it failed, its error says why.
    WriterStopped,
}

/// The request task's side: decodes chunks, checks the size limit and the
/// header, and queues the bytes for the writer.
async fn stream_chunks(
    chunks: &mut Streaming<SnapshotChunk>,
    queue: &mpsc::Sender<Bytes>,
    max_push_bytes: u64,
    is_served: impl Fn(&pack::PackHeader) -> bool,
) -> Result<Streamed, UploadRefused> {
    let mut header = HeaderCheck::default();
    let mut allow_older_version = false;
    let mut total_bytes = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|status| UploadRefused::new(Refusal::StreamError, status))?;
        allow_older_version |= chunk.allow_older_version;
        total_bytes += chunk.data.len() as u64;
        if total_bytes > max_push_bytes {
            return Err(UploadRefused::new(
                Refusal::TooLarge,
                Status::invalid_argument(format!(
                    "snapshot: larger than the limit of {max_push_bytes} bytes (--max-push-bytes)"
                )),
            ));
        }
        if let Some(verified) = header
            .update(&chunk.data)
            .map_err(UploadRefused::invalid_pack)?
            && is_served(&verified)
        {
            return Ok(Streamed::Unchanged(verified));
        }
        if queue.send(chunk.data).await.is_err() {
            return Ok(Streamed::WriterStopped);
        }
    }
    Ok(Streamed::Complete {
        header,
        allow_older_version,
    })
}

/// The upload thread's side: every queued chunk into the checksum and the
/// file, until the queue closes, at the pacer's rate; stops at the first
/// write error. The file gets whole 2 MiB blocks, whatever the chunks
/// (`UploadWriter`).
fn write_upload(
    mut file: UploadWriter,
    mut queued: mpsc::Receiver<Bytes>,
    mut pacer: Option<BytePacer>,
) -> std::io::Result<FooterCheck> {
    let mut footer = FooterCheck::new();
    while let Some(bytes) = queued.blocking_recv() {
        footer.update(&bytes);
        file.write_all(&bytes)?;
        if let Some(pacer) = pacer.as_mut() {
            pacer.pace(bytes.len());
        }
    }
    file.finish()?;
    Ok(footer)
}

/// Collects the first bytes until the header can be judged.
#[derive(Default)]
struct HeaderCheck {
    prefix: Vec<u8>,
    verified: bool,
}

impl HeaderCheck {
    /// The header, the first time it is complete and verified.
    fn update(&mut self, bytes: &[u8]) -> Result<Option<pack::PackHeader>, PackError> {
        if self.verified {
            return Ok(None);
        }
        let room = MAX_HEADER_PREFIX_BYTES - self.prefix.len();
        self.prefix
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        match pack::read_header(&self.prefix) {
            Ok(header) => {
                crate::pack::names::check_header_labels(&header)?;
                self.verified = true;
                self.prefix = Vec::new();
                Ok(Some(header))
            }
            Err(PackError::Truncated { .. }) if self.prefix.len() < MAX_HEADER_PREFIX_BYTES => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// At the end of the stream: a header still incomplete is a truncated pack.
    fn finish(&self) -> Result<(), PackError> {
        if self.verified {
            return Ok(());
        }
        pack::read_header(&self.prefix).map(|_| ())
    }
}
