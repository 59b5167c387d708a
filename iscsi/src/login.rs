//! The login phase (RFC 7143 §6.3, §11.12-13): security negotiation with
//! CHAP (one-way or mutual, §12.1.3), operational negotiation of the
//! session's parameters, and the decision whether this initiator may reach
//! this target at all.

use crate::exports::Credentials;
use crate::params::{Answer, Params, CMD_WINDOW, OUR_MAX_RECV_DATA_SEGMENT};
use crate::pdu::{op, Pdu};
use crate::text;

/// Login status class and detail (§11.13.5).
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Redirection: the target moved temporarily (to `TargetAddress`).
    pub const MOVED_TEMPORARILY: u16 = 0x0101;
    pub const AUTH_FAILURE: u16 = 0x0201;
    pub const FORBIDDEN: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const SESSION_DOES_NOT_EXIST: u16 = 0x020a;
    pub const INVALID_REQUEST: u16 = 0x020b;
    pub const TARGET_ERROR: u16 = 0x0300;
    pub const OUT_OF_RESOURCES: u16 = 0x0302;
}

pub const STAGE_SECURITY: u8 = 0;
pub const STAGE_OPERATIONAL: u8 = 1;
pub const STAGE_FULL_FEATURE: u8 = 3;

/// What the target side knows when an initiator names a target: whether it
/// exists, who may enter and how to authenticate.
pub struct TargetAuth {
    pub chap: Option<Credentials>,
    pub mutual: Option<Credentials>,
    pub initiators: Vec<String>,
    /// This portal's group tag (`TargetPortalGroupTag`).
    pub portal_group: u16,
    /// Where to send the initiator instead (`host:port,tag`): a standby
    /// target that redirects logins to the active one.
    pub redirect: Option<String>,
}

/// Finds targets by name for the login.
pub trait Directory {
    fn target(&self, iqn: &str) -> Option<TargetAuth>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// A finished login.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub initiator: String,
    pub target: Option<String>,
    pub kind: SessionType,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub params: Params,
    /// The initiator's CmdSN at login: the first non-immediate command's.
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

#[derive(PartialEq, Eq)]
enum Chap {
    /// No CHAP on this login.
    Off,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    Agreed,
    /// Challenge sent.
    Challenged {
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

/// The state of one connection's login, PDU after PDU.
pub struct Login {
    pub initiator: Option<String>,
    pub target: Option<String>,
    kind: SessionType,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    params: Params,
    auth: Option<TargetAuth>,
    chap: Chap,
    stage: u8,
    declared: bool,
    stat_sn: u32,
    /// Pending text of a request split over several PDUs (C bit).
    partial: Vec<u8>,
}

/// The answer to one login PDU: send `pdu`, then go on, stop (failed), or
/// start the full feature phase.
pub enum Step {
    Continue(Pdu),
    Fail(Pdu),
    Done(Pdu, Box<LoggedIn>),
}

const TEXT_MAX: usize = 64 * 1024;

impl Default for Login {
    fn default() -> Self {
        Login::new()
    }
}

impl Login {
    pub fn new() -> Login {
        Login {
            initiator: None,
            target: None,
            kind: SessionType::Normal,
            isid: [0; 6],
            tsih: 0,
            itt: 0,
            params: Params::default(),
            auth: None,
            chap: Chap::Off,
            stage: STAGE_SECURITY,
            declared: false,
            stat_sn: 0,
            partial: Vec::new(),
        }
    }

    fn response(
        &self,
        req: &Pdu,
        transit: bool,
        next: u8,
        status: u16,
        keys: &[(String, String)],
    ) -> Pdu {
        let mut r = Pdu::new(op::LOGIN_RESP);
        let csg = (req.flags() >> 2) & 0x03;
        r.set_flags(if transit { 0x80 } else { 0 } | (csg << 2) | if transit { next } else { 0 });
        r.bhs[2] = 0;
        r.bhs[3] = 0;
        r.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
        r.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        r.set_itt(req.itt());
        r.set_u32(24, self.stat_sn);
        let cmd_sn = req.u32_at(24);
        r.set_u32(28, cmd_sn);
        r.set_u32(32, cmd_sn.wrapping_add(CMD_WINDOW - 1));
        r.set_u16(36, status);
        r.data = text::encode(keys);
        r
    }

    fn fail(&self, req: &Pdu, status: u16) -> Step {
        Step::Fail(self.response(req, false, 0, status, &[]))
    }

    /// Handles one Login Request. `new_tsih` is called once, when the login
    /// completes, for the session's identifying handle.
    pub fn step(
        &mut self,
        req: &Pdu,
        dir: &dyn Directory,
        new_tsih: &mut dyn FnMut() -> u16,
    ) -> Step {
        if req.opcode() != op::LOGIN_REQ {
            return self.fail(req, status::INVALID_REQUEST);
        }
        let first = self.initiator.is_none() && self.partial.is_empty();
        if first {
            // version-min must be 0 (RFC 7143 draft-20).
            if req.bhs[3] != 0 {
                return self.fail(req, status::UNSUPPORTED_VERSION);
            }
            self.isid.copy_from_slice(&req.bhs[8..14]);
            self.tsih = u16::from_be_bytes([req.bhs[14], req.bhs[15]]);
            self.itt = req.itt();
            self.stat_sn = req.u32_at(28);
            if self.tsih != 0 {
                // Adding a connection to a session: one per session here.
                return self.fail(req, status::SESSION_DOES_NOT_EXIST);
            }
        }
        let flags = req.flags();
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let csg = (flags >> 2) & 0x03;
        let nsg = flags & 0x03;
        if transit && cont {
            return self.fail(req, status::INVALID_REQUEST);
        }
        // An initiator may skip security negotiation and start in the
        // operational stage (a target that requires CHAP then refuses).
        if first && csg == STAGE_OPERATIONAL {
            self.stage = STAGE_OPERATIONAL;
        }
        if csg != self.stage || csg == 2 || (transit && (nsg <= csg || nsg == 2)) {
            return self.fail(req, status::INVALID_REQUEST);
        }
        if self.partial.len() + req.data.len() > TEXT_MAX {
            return self.fail(req, status::OUT_OF_RESOURCES);
        }
        self.partial.extend_from_slice(&req.data);
        if cont {
            // More text follows: acknowledge with an empty response.
            return Step::Continue(self.response(req, false, 0, status::SUCCESS, &[]));
        }
        let mut pairs = text::parse(&std::mem::take(&mut self.partial));
        // Who is asking for what first: AuthMethod's answer depends on it.
        pairs.sort_by_key(|(k, _)| {
            !matches!(k.as_str(), "InitiatorName" | "TargetName" | "SessionType")
        });
        let mut out: Vec<(String, String)> = Vec::new();
        let mut chap_in: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            let Some(v) = v else {
                return self.fail(req, status::INVALID_REQUEST);
            };
            match k.as_str() {
                "InitiatorName" => self.initiator = Some(v),
                "TargetName" => self.target = Some(v),
                "SessionType" => {
                    self.kind = match v.as_str() {
                        "Discovery" => SessionType::Discovery,
                        "Normal" => SessionType::Normal,
                        _ => return self.fail(req, status::INVALID_REQUEST),
                    }
                }
                "AuthMethod" => {
                    if csg != STAGE_SECURITY {
                        return self.fail(req, status::INVALID_REQUEST);
                    }
                    let offered: Vec<&str> = v.split(',').collect();
                    let need_chap = self.auth.as_ref().is_some_and(|a| a.chap.is_some())
                        || self.needs_chap(dir);
                    if need_chap {
                        if !offered.contains(&"CHAP") {
                            return self.fail(req, status::AUTH_FAILURE);
                        }
                        self.chap = Chap::Agreed;
                        out.push((k, "CHAP".into()));
                    } else if offered.contains(&"None") {
                        out.push((k, "None".into()));
                    } else {
                        return self.fail(req, status::AUTH_FAILURE);
                    }
                }
                "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" => chap_in.push((k, v)),
                // Operational keys may come in the security stage too.
                _ => match self.params.offer(&k, &v) {
                    Answer::Value(a) => out.push((k, a)),
                    Answer::Silent => {}
                    Answer::NotUnderstood => out.push((k, "NotUnderstood".into())),
                    Answer::Reject => out.push((k, "Reject".into())),
                    Answer::Fail(_) => return self.fail(req, status::INVALID_REQUEST),
                },
            }
        }
        if first || self.auth.is_none() {
            // The initiator and target must be known from the first PDU.
            let Some(initiator) = self.initiator.clone() else {
                return self.fail(req, status::MISSING_PARAMETER);
            };
            if !crate::exports::valid_iqn(&initiator.to_ascii_lowercase()) && initiator.is_empty() {
                return self.fail(req, status::INVALID_REQUEST);
            }
            if self.kind == SessionType::Normal {
                let Some(target) = self.target.clone() else {
                    return self.fail(req, status::MISSING_PARAMETER);
                };
                let Some(auth) = dir.target(&target) else {
                    return self.fail(req, status::NOT_FOUND);
                };
                if !auth.initiators.is_empty() && !auth.initiators.iter().any(|i| i == &initiator) {
                    return self.fail(req, status::FORBIDDEN);
                }
                if let Some(to) = &auth.redirect {
                    let keys = [("TargetAddress".to_string(), to.clone())];
                    return Step::Fail(self.response(
                        req,
                        false,
                        0,
                        status::MOVED_TEMPORARILY,
                        &keys,
                    ));
                }
                if first {
                    out.push(("TargetPortalGroupTag".into(), auth.portal_group.to_string()));
                }
                self.auth = Some(auth);
            } else {
                self.auth = Some(TargetAuth {
                    chap: None,
                    mutual: None,
                    initiators: Vec::new(),
                    portal_group: 0,
                    redirect: None,
                });
            }
        }
        if !chap_in.is_empty() {
            match self.chap_step(&chap_in, &mut out) {
                Ok(()) => {}
                Err(s) => return self.fail(req, s),
            }
        }
        let chap_pending = matches!(self.chap, Chap::Agreed | Chap::Challenged { .. });
        // CHAP required but never done (the security stage skipped).
        if csg != STAGE_SECURITY
            && self.auth.as_ref().is_some_and(|a| a.chap.is_some())
            && self.chap != Chap::Done
        {
            return self.fail(req, status::AUTH_FAILURE);
        }
        // Leaving the security stage needs authentication done.
        if csg == STAGE_SECURITY
            && transit
            && self.auth.as_ref().is_some_and(|a| a.chap.is_some())
            && self.chap != Chap::Done
        {
            if chap_pending {
                // Still exchanging: stay in the stage.
                return Step::Continue(self.response(req, false, 0, status::SUCCESS, &out));
            }
            return self.fail(req, status::AUTH_FAILURE);
        }
        let may_transit = transit && !chap_pending;
        if csg == STAGE_OPERATIONAL && !self.declared {
            self.declared = true;
            out.push((
                "MaxRecvDataSegmentLength".into(),
                OUR_MAX_RECV_DATA_SEGMENT.to_string(),
            ));
        }
        if may_transit {
            self.stage = nsg;
        }
        if may_transit && nsg == STAGE_FULL_FEATURE {
            if self.kind == SessionType::Normal && self.target.is_none() {
                return self.fail(req, status::MISSING_PARAMETER);
            }
            self.tsih = new_tsih();
            let resp = self.response(req, true, nsg, status::SUCCESS, &out);
            let done = LoggedIn {
                initiator: self.initiator.clone().unwrap_or_default(),
                target: self.target.clone(),
                kind: self.kind.clone(),
                isid: self.isid,
                tsih: self.tsih,
                params: self.params.clone(),
                cmd_sn: req.u32_at(24),
                exp_stat_sn: self.stat_sn.wrapping_add(1),
            };
            return Step::Done(resp, Box::new(done));
        }
        let resp = self.response(req, may_transit, nsg, status::SUCCESS, &out);
        Step::Continue(resp)
    }

    fn needs_chap(&self, dir: &dyn Directory) -> bool {
        if self.kind != SessionType::Normal {
            return false;
        }
        self.target
            .as_deref()
            .and_then(|t| dir.target(t))
            .is_some_and(|a| a.chap.is_some())
    }

    /// One round of the CHAP exchange (§12.1.3).
    fn chap_step(
        &mut self,
        keys: &[(String, String)],
        out: &mut Vec<(String, String)>,
    ) -> Result<(), u16> {
        let get = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let Some(auth) = self.auth.as_ref() else {
            return Err(status::AUTH_FAILURE);
        };
        let Some(creds) = auth.chap.clone() else {
            return Err(status::AUTH_FAILURE);
        };
        match &self.chap {
            Chap::Agreed => {
                let Some(algs) = get("CHAP_A") else {
                    return Err(status::AUTH_FAILURE);
                };
                // MD5 (5) is the one every initiator has.
                if !algs.split(',').any(|a| a == "5") {
                    out.push(("CHAP_A".into(), "Reject".into()));
                    return Err(status::AUTH_FAILURE);
                }
                let id: u8 = rand::random();
                let challenge: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
                out.push(("CHAP_A".into(), "5".into()));
                out.push(("CHAP_I".into(), id.to_string()));
                out.push(("CHAP_C".into(), text::hex(&challenge)));
                self.chap = Chap::Challenged { id, challenge };
                Ok(())
            }
            Chap::Challenged { id, challenge } => {
                let (Some(name), Some(resp)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(status::AUTH_FAILURE);
                };
                let Some(resp) = text::binary(resp) else {
                    return Err(status::AUTH_FAILURE);
                };
                let want = chap_response(*id, creds.secret.as_bytes(), challenge);
                let name_ok = constant_time_eq(name.as_bytes(), creds.user.as_bytes());
                let resp_ok = constant_time_eq(&resp, &want);
                if !(name_ok & resp_ok) {
                    return Err(status::AUTH_FAILURE);
                }
                // Mutual: answer the initiator's challenge.
                if let (Some(i), Some(c)) = (get("CHAP_I"), get("CHAP_C")) {
                    let Some(mutual) = auth.mutual.clone() else {
                        return Err(status::AUTH_FAILURE);
                    };
                    let (Some(i), Some(c)) = (text::number(i), text::binary(c)) else {
                        return Err(status::AUTH_FAILURE);
                    };
                    // A reflected challenge would let the initiator use
                    // the target as an oracle.
                    if i > 255 || c == *challenge || c.is_empty() || c.len() > 1024 {
                        return Err(status::AUTH_FAILURE);
                    }
                    let r = chap_response(i as u8, mutual.secret.as_bytes(), &c);
                    out.push(("CHAP_N".into(), mutual.user.clone()));
                    out.push(("CHAP_R".into(), text::hex(&r)));
                } else if auth.mutual.is_some() {
                    // The target is configured for mutual CHAP, the
                    // initiator did not ask: one-way is still allowed.
                }
                self.chap = Chap::Done;
                Ok(())
            }
            Chap::Off | Chap::Done => Err(status::AUTH_FAILURE),
        }
    }
}

/// MD5(id || secret || challenge).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(Option<Credentials>);
    impl Directory for Dir {
        fn target(&self, iqn: &str) -> Option<TargetAuth> {
            (iqn == "iqn.t").then(|| TargetAuth {
                chap: self.0.clone(),
                mutual: Some("tgt:targetsecret1".parse().expect("creds")),
                initiators: vec![],
                portal_group: 1,
                redirect: None,
            })
        }
    }

    fn req(flags: u8, keys: &[(&str, &str)]) -> Pdu {
        let mut p = Pdu::new(op::LOGIN_REQ);
        p.bhs[0] |= 0x40;
        p.set_flags(flags);
        let k: Vec<(String, String)> = keys
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        p.data = text::encode(&k);
        p
    }

    #[test]
    fn plain_login_reaches_full_feature() {
        let dir = Dir(None);
        let mut l = Login::new();
        let r = l.step(
            &req(
                0x80 | 0x01,
                &[
                    ("InitiatorName", "iqn.i"),
                    ("TargetName", "iqn.t"),
                    ("AuthMethod", "None"),
                ],
            ),
            &dir,
            &mut || 7,
        );
        assert!(matches!(r, Step::Continue(_)));
        let r = l.step(
            &req(0x80 | (1 << 2) | 0x03, &[("MaxBurstLength", "65536")]),
            &dir,
            &mut || 7,
        );
        match r {
            Step::Done(p, done) => {
                assert_eq!(p.flags() & 0x83, 0x83);
                assert_eq!(done.tsih, 7);
                assert_eq!(done.params.max_burst, 65536);
            }
            _ => panic!("login did not finish"),
        }
    }

    #[test]
    fn unknown_target_and_missing_chap_fail() {
        let mut l = Login::new();
        let r = l.step(
            &req(
                0x81,
                &[("InitiatorName", "iqn.i"), ("TargetName", "iqn.nope")],
            ),
            &Dir(None),
            &mut || 1,
        );
        assert!(matches!(r, Step::Fail(p) if p.bhs[36] == 2 && p.bhs[37] == 3));
        let dir = Dir(Some("u:abcdefghijkl".parse().expect("creds")));
        let mut l = Login::new();
        let r = l.step(
            &req(
                0x81,
                &[
                    ("InitiatorName", "iqn.i"),
                    ("TargetName", "iqn.t"),
                    ("AuthMethod", "None"),
                ],
            ),
            &dir,
            &mut || 1,
        );
        assert!(matches!(r, Step::Fail(p) if p.bhs[36] == 2 && p.bhs[37] == 1));
    }

    #[test]
    fn chap_right_and_wrong_secret() {
        for (secret, ok) in [("abcdefghijkl", true), ("wrongwrongwr", false)] {
            let dir = Dir(Some("u:abcdefghijkl".parse().expect("creds")));
            let mut l = Login::new();
            // libiscsi asks to move on (T=1) in the first PDU already.
            let r = l.step(
                &req(
                    0x81,
                    &[
                        ("InitiatorName", "iqn.i"),
                        ("TargetName", "iqn.t"),
                        ("AuthMethod", "CHAP,None"),
                    ],
                ),
                &dir,
                &mut || 1,
            );
            assert!(matches!(r, Step::Continue(_)));
            let Step::Continue(p) = l.step(&req(0x00, &[("CHAP_A", "5")]), &dir, &mut || 1) else {
                panic!("no challenge");
            };
            let keys = text::parse(&p.data);
            let get = |k: &str| {
                keys.iter()
                    .find(|(n, _)| n == k)
                    .and_then(|(_, v)| v.clone())
                    .expect(k)
            };
            let id = get("CHAP_I").parse::<u8>().expect("id");
            let c = text::binary(&get("CHAP_C")).expect("challenge");
            let r = text::hex(&chap_response(id, secret.as_bytes(), &c));
            // Mutual: the initiator challenges the target back.
            let mine = [9u8; 16];
            let step = l.step(
                &req(
                    0x81,
                    &[
                        ("CHAP_N", "u"),
                        ("CHAP_R", &r),
                        ("CHAP_I", "7"),
                        ("CHAP_C", &text::hex(&mine)),
                    ],
                ),
                &dir,
                &mut || 1,
            );
            match step {
                Step::Continue(p) if ok => {
                    let keys = text::parse(&p.data);
                    let get = |k: &str| {
                        keys.iter()
                            .find(|(n, _)| n == k)
                            .and_then(|(_, v)| v.clone())
                            .expect(k)
                    };
                    assert_eq!(get("CHAP_N"), "tgt");
                    assert_eq!(
                        text::binary(&get("CHAP_R")),
                        Some(chap_response(7, b"targetsecret1", &mine))
                    );
                    assert_eq!(p.flags() & 0x80, 0x80, "moves on to the next stage");
                }
                Step::Fail(_) if !ok => {}
                _ => panic!("secret {secret}: unexpected outcome"),
            }
        }
    }
}
