//! One way to answer the kernel: a callback's result from the client
//! library becomes the reply's success, or the errno of its error.

use crate::convert::errno;
use fuser::{
    Errno, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
};
use sparefs_client::ClientError;

/// A fuser reply that can carry an error.
pub trait Failable: Sized {
    fn fail(self, e: Errno);
}

macro_rules! failable {
    ($($t:ty),*) => {
        $(impl Failable for $t {
            fn fail(self, e: Errno) {
                self.error(e)
            }
        })*
    };
}

failable!(
    ReplyAttr,
    ReplyCreate,
    ReplyData,
    ReplyDirectory,
    ReplyDirectoryPlus,
    ReplyEmpty,
    ReplyEntry,
    ReplyLock,
    ReplyLseek,
    ReplyOpen,
    ReplyStatfs,
    ReplyWrite,
    ReplyXattr
);

/// Answers with `ok(reply, value)`, or with the errno of the error.
pub fn answer<P: Failable, T>(reply: P, result: Result<T, ClientError>, ok: impl FnOnce(P, T)) {
    match result {
        Ok(v) => ok(reply, v),
        Err(e) => reply.fail(errno(&e)),
    }
}
