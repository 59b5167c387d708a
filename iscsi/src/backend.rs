//! Where a LUN's bytes live: the `Backend` trait the SCSI layer calls, and
//! its implementation over an image file through the sparefs client
//! library (`ImageBackend`). A local file (`FileBackend`) serves the unit
//! tests of the SCSI layer and comparisons against a plain disk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The store could not be reached in time (meta or chunkservers).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("no space")]
    NoSpace,
    /// Another target took the image over (its fence is newer).
    #[error("fenced: another target holds the image now")]
    Fenced,
    #[error("{0}")]
    Io(String),
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// A LUN's storage. Writes may be buffered; `flush` returns once every
/// write acknowledged before it is durable.
pub trait Backend: Send + Sync {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>>>;
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>>;
    fn flush(&self) -> BoxFuture<'_, Result<()>>;
    /// Turns the range into a hole (reads return zeros).
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>>;
    /// The image was resized elsewhere (`sparefs image resize`).
    fn resized(&self, _size: u64) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    /// Where to ask for the image's size now, if it can change.
    fn ino(&self) -> Option<u64> {
        None
    }
    /// Starts serving as the image's writer under fence `epoch`: what was
    /// cached from before (another target may have written since) is
    /// dropped, and every commit from now on carries the epoch.
    fn activate(&self, _epoch: u64) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// An image file in sparefs, open through the client library.
pub struct ImageBackend {
    data: Arc<sparefs_client::DataClient>,
    ino: sparefs_proto::InodeId,
    /// Reopened at every activation.
    file: std::sync::RwLock<Arc<sparefs_client::OpenFile>>,
    size: std::sync::atomic::AtomicU64,
}

fn client_error(e: sparefs_client::ClientError) -> BackendError {
    use sparefs_client::ClientError;
    use sparefs_proto::Errno;
    match &e {
        // The meta or the chunkservers did not answer within the client's
        // deadline: NOT READY, so the initiator retries or fails over.
        ClientError::Unavailable(_) | ClientError::DataUnavailable(_) => {
            BackendError::Unavailable(e.to_string())
        }
        ClientError::Errno(Errno::ENOSPC) => BackendError::NoSpace,
        ClientError::Errno(Errno::EKEYREVOKED) => BackendError::Fenced,
        ClientError::Errno(Errno::ETIMEDOUT | Errno::EAGAIN) => {
            BackendError::Unavailable(e.to_string())
        }
        _ => BackendError::Io(e.to_string()),
    }
}

impl ImageBackend {
    pub async fn open(
        meta: Arc<sparefs_client::MetaClient>,
        ino: u64,
    ) -> std::result::Result<ImageBackend, String> {
        let attr = meta
            .getattr(sparefs_proto::InodeId(ino))
            .await
            .map_err(|e| format!("image inode {ino}: {e}"))?;
        let data = Arc::new(sparefs_client::DataClient::new(meta));
        let file = sparefs_client::OpenFile::open(data.clone(), &attr)
            .await
            .map_err(|e| format!("opening image inode {ino}: {e}"))?;
        Ok(ImageBackend {
            data,
            ino: sparefs_proto::InodeId(ino),
            file: std::sync::RwLock::new(Arc::new(file)),
            size: std::sync::atomic::AtomicU64::new(attr.size),
        })
    }

    fn file(&self) -> Arc<sparefs_client::OpenFile> {
        match self.file.read() {
            Ok(f) => f.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

impl Backend for ImageBackend {
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn resized(&self, size: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.file().set_size(size).await;
            self.size.store(size, std::sync::atomic::Ordering::Relaxed);
        })
    }
    fn ino(&self) -> Option<u64> {
        Some(self.ino.0)
    }
    fn activate(&self, epoch: u64) -> BoxFuture<'_, std::result::Result<(), String>> {
        Box::pin(async move {
            self.data.set_fence(self.ino, Some(epoch));
            self.data.invalidate(self.ino);
            let attr = self
                .data
                .meta
                .getattr(self.ino)
                .await
                .map_err(|e| format!("image inode {}: {e}", self.ino.0))?;
            let file = sparefs_client::OpenFile::open(self.data.clone(), &attr)
                .await
                .map_err(|e| format!("opening image inode {}: {e}", self.ino.0))?;
            match self.file.write() {
                Ok(mut f) => *f = Arc::new(file),
                Err(p) => *p.into_inner() = Arc::new(file),
            }
            self.size
                .store(attr.size, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })
    }
    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>>> {
        Box::pin(async move {
            let mut out = self
                .file()
                .read(offset, len, self.size())
                .await
                .map_err(client_error)?;
            // Past the bytes ever written of a sparse image: zeros.
            out.resize(len, 0);
            Ok(out)
        })
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.file().write(offset, data).await.map_err(client_error) })
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.file().flush().await.map(|_| ()).map_err(client_error) })
    }
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.file()
                .punch_hole(offset, len)
                .await
                .map_err(client_error)
        })
    }
}

/// A local file of fixed size.
pub struct FileBackend {
    file: std::fs::File,
    size: u64,
}

impl FileBackend {
    pub fn create(path: &std::path::Path, size: u64) -> std::io::Result<FileBackend> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(size)?;
        Ok(FileBackend { file, size })
    }
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, Result<Vec<u8>>> {
        use std::os::unix::fs::FileExt;
        Box::pin(async move {
            let mut buf = vec![0u8; len];
            self.file
                .read_exact_at(&mut buf, offset)
                .map_err(|e| BackendError::Io(e.to_string()))?;
            Ok(buf)
        })
    }
    fn write<'a>(&'a self, offset: u64, data: &'a [u8]) -> BoxFuture<'a, Result<()>> {
        use std::os::unix::fs::FileExt;
        Box::pin(async move {
            self.file
                .write_all_at(data, offset)
                .map_err(|e| BackendError::Io(e.to_string()))
        })
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.file
                .sync_data()
                .map_err(|e| BackendError::Io(e.to_string()))
        })
    }
    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, Result<()>> {
        use std::os::unix::fs::FileExt;
        Box::pin(async move {
            // Zeros: what a hole reads as.
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(zeros.len() as u64) as usize;
                self.file
                    .write_all_at(&zeros[..n], at)
                    .map_err(|e| BackendError::Io(e.to_string()))?;
                at += n as u64;
            }
            Ok(())
        })
    }
}
