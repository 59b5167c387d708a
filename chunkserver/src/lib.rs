//! The fragment store: a directory of spare space, checksums, scrub, rebuild.
//! Must not depend on `meta`; it talks to it through `proto`. Filled by the
//! data-path issue (issue 3); empty today.
