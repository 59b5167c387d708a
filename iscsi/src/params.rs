//! Operational parameters negotiated at login (RFC 7143 §13): the answer
//! the target gives to each key the initiator offers, and the values the
//! session then runs with.

/// What this target accepts at most.
pub const OUR_MAX_RECV_DATA_SEGMENT: u32 = 256 * 1024;
pub const OUR_MAX_BURST: u32 = 16 * 1024 * 1024 - 512;
pub const OUR_FIRST_BURST: u32 = 256 * 1024;
/// Commands in flight per session (CmdSN window).
pub const CMD_WINDOW: u32 = 64;

/// The values a session runs with (defaults of §13 until negotiated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's receive limit: Data-In and text PDUs we send.
    pub max_xmit_data_segment: u32,
    pub max_burst: u32,
    pub first_burst: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            max_xmit_data_segment: 8192,
            max_burst: 262_144,
            first_burst: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
        }
    }
}

/// The answer to one offered key, or why the login must fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Reply with this value.
    Value(String),
    /// Declarative or already settled: nothing to send back.
    Silent,
    NotUnderstood,
    Reject,
    /// A value this target cannot run with: the login fails (§6.2).
    Fail(&'static str),
}

fn bool_of(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.into()
}

impl Params {
    /// Negotiates one operational key the initiator offered (the login
    /// layer handles the identity and security keys).
    pub fn offer(&mut self, key: &str, value: &str) -> Answer {
        let num = |v: &str| {
            crate::text::number(v)
                .filter(|n| *n <= u32::MAX as u64)
                .map(|n| n as u32)
        };
        match key {
            "HeaderDigest" | "DataDigest" => {
                // The first of the initiator's list we support.
                let pick = value.split(',').find(|c| *c == "CRC32C" || *c == "None");
                match pick {
                    Some(c) => {
                        let on = c == "CRC32C";
                        if key == "HeaderDigest" {
                            self.header_digest = on;
                        } else {
                            self.data_digest = on;
                        }
                        Answer::Value(c.into())
                    }
                    None => Answer::Reject,
                }
            }
            "MaxRecvDataSegmentLength" => match num(value) {
                Some(n) if (512..=16_777_215).contains(&n) => {
                    self.max_xmit_data_segment = n;
                    Answer::Silent
                }
                _ => Answer::Reject,
            },
            "MaxBurstLength" => match num(value) {
                Some(n) if (512..=16_777_215).contains(&n) => {
                    self.max_burst = n.min(OUR_MAX_BURST);
                    self.first_burst = self.first_burst.min(self.max_burst);
                    Answer::Value(self.max_burst.to_string())
                }
                _ => Answer::Reject,
            },
            "FirstBurstLength" => match num(value) {
                Some(n) if (512..=16_777_215).contains(&n) => {
                    self.first_burst = n.min(OUR_FIRST_BURST).min(self.max_burst);
                    Answer::Value(self.first_burst.to_string())
                }
                _ => Answer::Reject,
            },
            "InitialR2T" => match bool_of(value) {
                // OR: Yes if either side wants it; this target does not.
                Some(b) => {
                    self.initial_r2t = b;
                    Answer::Value(yes_no(b))
                }
                None => Answer::Reject,
            },
            "ImmediateData" => match bool_of(value) {
                Some(b) => {
                    self.immediate_data = b;
                    Answer::Value(yes_no(b))
                }
                None => Answer::Reject,
            },
            "DataPDUInOrder" | "DataSequenceInOrder" => match bool_of(value) {
                // OR with our Yes: in order is what this target needs.
                Some(_) => Answer::Value("Yes".into()),
                None => Answer::Reject,
            },
            "MaxOutstandingR2T" => match num(value) {
                Some(n) if (1..=65535).contains(&n) => {
                    self.max_outstanding_r2t = 1;
                    Answer::Value("1".into())
                }
                _ => Answer::Reject,
            },
            "ErrorRecoveryLevel" => match num(value) {
                Some(n) if n <= 2 => {
                    self.error_recovery_level = 0;
                    Answer::Value("0".into())
                }
                _ => Answer::Reject,
            },
            "DefaultTime2Wait" => match num(value) {
                Some(n) if n <= 3600 => {
                    self.default_time2wait = n.max(2);
                    Answer::Value(self.default_time2wait.to_string())
                }
                _ => Answer::Reject,
            },
            "DefaultTime2Retain" => match num(value) {
                Some(n) if n <= 3600 => {
                    // Error recovery level 0: nothing is kept for a lost
                    // connection.
                    self.default_time2retain = 0;
                    Answer::Value("0".into())
                }
                _ => Answer::Reject,
            },
            "MaxConnections" => match num(value) {
                Some(n) if (1..=65535).contains(&n) => Answer::Value("1".into()),
                _ => Answer::Reject,
            },
            "IFMarker" | "OFMarker" => Answer::Value("No".into()),
            "TaskReporting" => Answer::Value("RFC3720".into()),
            "iSCSIProtocolLevel" => match num(value) {
                Some(n) => Answer::Value(n.min(1).to_string()),
                None => Answer::Reject,
            },
            "OFMarkInt" | "IFMarkInt" => Answer::Reject,
            "InitiatorAlias" => Answer::Silent,
            _ => Answer::NotUnderstood,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_to_the_lower_side() {
        let mut p = Params::default();
        assert_eq!(
            p.offer("HeaderDigest", "CRC32C,None"),
            Answer::Value("CRC32C".into())
        );
        assert!(p.header_digest);
        assert_eq!(p.offer("DataDigest", "None"), Answer::Value("None".into()));
        assert_eq!(
            p.offer("MaxBurstLength", "16776192"),
            Answer::Value(OUR_MAX_BURST.min(16776192).to_string())
        );
        assert_eq!(
            p.offer("FirstBurstLength", "1048576"),
            Answer::Value(OUR_FIRST_BURST.to_string())
        );
        assert_eq!(p.offer("MaxRecvDataSegmentLength", "65536"), Answer::Silent);
        assert_eq!(p.max_xmit_data_segment, 65536);
        assert_eq!(p.offer("InitialR2T", "No"), Answer::Value("No".into()));
        assert!(!p.initial_r2t);
        assert_eq!(
            p.offer("ErrorRecoveryLevel", "2"),
            Answer::Value("0".into())
        );
        assert_eq!(p.offer("MaxRecvDataSegmentLength", "100"), Answer::Reject);
        assert_eq!(p.offer("HeaderDigest", "MD5"), Answer::Reject);
        assert_eq!(p.offer("X-com.example.Foo", "1"), Answer::NotUnderstood);
        assert_eq!(
            p.offer("MaxBurstLength", "0x1000"),
            Answer::Value("4096".into())
        );
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let mut p = Params::default();
        p.offer("MaxBurstLength", "4096");
        p.offer("FirstBurstLength", "65536");
        assert_eq!(p.first_burst, 4096);
    }
}
