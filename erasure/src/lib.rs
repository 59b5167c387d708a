//! Reed-Solomon coding of blocks into fragments and the fragment checksum
//! format. Owns no I/O. Filled by the data-path issue (issue 3); empty today.
