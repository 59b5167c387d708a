//! POSIX errno values the namespace answers with, numbered as Linux does so
//! the FUSE adapter and the CLI map them without a table.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[repr(i32)]
pub enum Errno {
    #[error("Operation not permitted")]
    EPERM = 1,
    #[error("No such file or directory")]
    ENOENT = 2,
    #[error("Input/output error")]
    EIO = 5,
    #[error("Resource temporarily unavailable")]
    EAGAIN = 11,
    #[error("Permission denied")]
    EACCES = 13,
    #[error("Device or resource busy")]
    EBUSY = 16,
    #[error("File exists")]
    EEXIST = 17,
    #[error("Invalid cross-device link")]
    EXDEV = 18,
    #[error("Not a directory")]
    ENOTDIR = 20,
    #[error("Is a directory")]
    EISDIR = 21,
    #[error("Invalid argument")]
    EINVAL = 22,
    #[error("File too large")]
    EFBIG = 27,
    #[error("No space left on device")]
    ENOSPC = 28,
    #[error("Too many links")]
    EMLINK = 31,
    #[error("Numerical result out of range")]
    ERANGE = 34,
    #[error("File name too long")]
    ENAMETOOLONG = 36,
    #[error("Function not implemented")]
    ENOSYS = 38,
    #[error("Directory not empty")]
    ENOTEMPTY = 39,
    #[error("Too many levels of symbolic links")]
    ELOOP = 40,
    #[error("No data available")]
    ENODATA = 61,
    #[error("Operation not supported")]
    ENOTSUP = 95,
    #[error("Connection timed out")]
    ETIMEDOUT = 110,
    #[error("Stale file handle")]
    ESTALE = 116,
    /// A fenced commit from a writer whose fence was taken over.
    #[error("Key has been revoked")]
    EKEYREVOKED = 128,
}

impl Errno {
    /// The Linux errno number.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The errno's symbolic name, for logs and scripts.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::EIO => "EIO",
            Errno::ESTALE => "ESTALE",
            Errno::EKEYREVOKED => "EKEYREVOKED",
            Errno::EAGAIN => "EAGAIN",
            Errno::EACCES => "EACCES",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::EXDEV => "EXDEV",
            Errno::ENOTDIR => "ENOTDIR",
            Errno::EISDIR => "EISDIR",
            Errno::EINVAL => "EINVAL",
            Errno::EFBIG => "EFBIG",
            Errno::ENOSPC => "ENOSPC",
            Errno::EMLINK => "EMLINK",
            Errno::ERANGE => "ERANGE",
            Errno::ENAMETOOLONG => "ENAMETOOLONG",
            Errno::ENOSYS => "ENOSYS",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ELOOP => "ELOOP",
            Errno::ENODATA => "ENODATA",
            Errno::ENOTSUP => "ENOTSUP",
            Errno::ETIMEDOUT => "ETIMEDOUT",
        }
    }
}
