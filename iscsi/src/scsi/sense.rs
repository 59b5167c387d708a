//! SCSI status codes and sense data (SPC-4 §4.5, fixed format).

pub const GOOD: u8 = 0x00;
pub const CHECK_CONDITION: u8 = 0x02;
pub const CONDITION_MET: u8 = 0x04;
pub const BUSY: u8 = 0x08;
pub const RESERVATION_CONFLICT: u8 = 0x18;
pub const TASK_SET_FULL: u8 = 0x28;
pub const TASK_ABORTED: u8 = 0x40;

pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Additional sense code and qualifier pairs.
pub mod asc {
    pub type Code = (u8, u8);
    pub const NONE: Code = (0x00, 0x00);
    pub const NOT_READY: Code = (0x04, 0x00);
    /// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION.
    pub const ALUA_TRANSITION: Code = (0x04, 0x0a);
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE.
    pub const ALUA_STANDBY: Code = (0x04, 0x0b);
    pub const COMMUNICATION_TIMEOUT: Code = (0x08, 0x01);
    pub const WRITE_ERROR: Code = (0x0c, 0x00);
    pub const UNRECOVERED_READ_ERROR: Code = (0x11, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Code = (0x1a, 0x00);
    pub const MISCOMPARE_DURING_VERIFY: Code = (0x1d, 0x00);
    pub const INVALID_OPCODE: Code = (0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Code = (0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Code = (0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Code = (0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Code = (0x26, 0x00);
    pub const INVALID_RELEASE_OF_PR: Code = (0x26, 0x04);
    pub const WRITE_PROTECTED: Code = (0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Code = (0x27, 0x07);
    pub const POWER_ON_RESET: Code = (0x29, 0x00);
    pub const BUS_DEVICE_RESET: Code = (0x29, 0x03);
    pub const MODE_PARAMETERS_CHANGED: Code = (0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Code = (0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Code = (0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Code = (0x2a, 0x05);
    pub const ALUA_STATE_CHANGED: Code = (0x2a, 0x06);
    pub const CAPACITY_CHANGED: Code = (0x2a, 0x09);
    pub const COMMANDS_CLEARED_BY_ANOTHER: Code = (0x2f, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Code = (0x39, 0x00);
    pub const MEDIUM_REMOVAL_PREVENTED: Code = (0x53, 0x02);
    pub const INTERNAL_TARGET_FAILURE: Code = (0x44, 0x00);
    pub const DATA_PHASE_ERROR: Code = (0x4b, 0x00);
    pub const INSUFFICIENT_REGISTRATION_RESOURCES: Code = (0x55, 0x04);
    pub const REPORTED_LUNS_CHANGED: Code = (0x3f, 0x0e);
}

/// Fixed-format sense data (response code 70h).
pub fn fixed(key: u8, code: asc::Code) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key & 0x0f;
    s[7] = 10;
    s[12] = code.0;
    s[13] = code.1;
    s
}

/// Fixed-format sense data with the INFORMATION field valid (a
/// miscompare's offset).
pub fn fixed_with_info(key: u8, code: asc::Code, info: u32) -> Vec<u8> {
    let mut s = fixed(key, code);
    s[0] |= 0x80;
    s[3..7].copy_from_slice(&info.to_be_bytes());
    s
}
