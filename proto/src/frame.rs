//! Length-prefixed frames: a u32 big-endian length, then a postcard body.
//! A frame over `FRAME_BYTES_MAX` or one that does not decode is an error for
//! that connection only; the caller closes it.

use crate::limits::FRAME_BYTES_MAX;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: FRAME_BYTES_MAX,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    Ok(postcard::from_bytes(body)?)
}

/// A connection's read side, buffered: a frame's length and body (and
/// often the next frames) arrive in one read call instead of two each.
/// Bodies larger than the buffer are read around it, not copied through.
pub fn buffered<R: AsyncRead>(r: R) -> tokio::io::BufReader<R> {
    tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, r)
}

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Reads one frame's body. Returns `Closed` on a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge {
            len,
            max: FRAME_BYTES_MAX,
        });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limits() {
        let bytes = encode(&(7u64, String::from("x"))).expect("encode");
        let mut cur = std::io::Cursor::new(bytes);
        let mut buf = Vec::new();
        read_frame(&mut cur, &mut buf).await.expect("read");
        let (a, b): (u64, String) = decode(&buf).expect("decode");
        assert_eq!((a, b.as_str()), (7, "x"));
        let mut huge = std::io::Cursor::new(((FRAME_BYTES_MAX + 1) as u32).to_be_bytes().to_vec());
        assert!(matches!(
            read_frame(&mut huge, &mut buf).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut empty = std::io::Cursor::new(Vec::new());
        assert!(matches!(
            read_frame(&mut empty, &mut buf).await,
            Err(FrameError::Closed)
        ));
        assert!(decode::<(u64, String)>(&[0xff, 0xff, 0xff]).is_err());
    }
}
