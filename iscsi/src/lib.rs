//! The iSCSI target serving image files stored in sparefs as LUNs, through the
//! client library. Not started; empty today.
