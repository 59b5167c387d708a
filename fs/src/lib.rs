//! The FUSE adapter over the client library (fuser). Has no filesystem
//! semantics of its own. Filled by the data-path issue (issue 3); empty today.
