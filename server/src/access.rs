//! Who may do what: the one table of roles × permissions, and the team each role reaches.
//!
//! Every HTTP handler and the sync ledger ask here; nothing else compares roles. A refusal says
//! which role the request came from and which roles may do the thing, so an operator can tell a
//! misconfigured device from an attack.
//!
//! | permission        | field | team lead | coordinator | protection officer | administrator | auditor |
//! |-------------------|-------|-----------|-------------|--------------------|---------------|---------|
//! | `Sync`            | team  | team      |             |                    |               |         |
//! | `ReadMap`         |       | team      | all         |                    |               |         |
//! | `ReadEncounter`   | team  | team      | all         | UASC/missing cases |               |         |
//! | `ReadHealth`      | team  | team      |             | UASC/missing cases |               |         |
//! | `Export`          |       | team      | all         |                    |               |         |
//! | `ReadVault`       |       |           |             | all                |               |         |
//! | `Purge`           |       |           |             | all                |               |         |
//! | `ManageDevices`   |       |           |             |                    | all           |         |
//! | `ApproveDevices`  |       | team      |             |                    |               |         |
//! | `ReadAudit`       |       |           |             |                    |               | all     |
//!
//! "team" means the device's own team only; what a role without `ReadHealth` is shown of a
//! record is [`crate::redaction`]'s one allow-list.
//!
//! A device awaiting approval (enrolled or rotated over HTTP by an administrator, see
//! [`crate::directory`]) may do none of these: [`require`] refuses it first, with a 403 that says
//! so, until a team lead of its team approves it (`ApproveDevices`).

use crate::directory::{Device, Role};

/// Why [`require`] refused a device; the HTTP layer answers 403 for both
/// (`AppError: From<AccessError>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The device was enrolled or rotated over HTTP and no team lead of `team` approved it yet.
    #[error("this device awaits approval by a team lead of {team}")]
    AwaitingApproval { team: String },
    /// The device's role may not do this; the message says which roles may.
    #[error("{0}")]
    Forbidden(String),
}

/// Something a request may ask to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Upload and download encounter documents by sync (whole documents: health included).
    Sync,
    /// The map, stats, hotspots and the live event stream: facts from the index, no record.
    ReadMap,
    /// One encounter's merged record, or the list of encounters.
    ReadEncounter,
    /// The health detail of casualty sub-records in a record read.
    ReadHealth,
    /// CSV, GeoJSON and HXL exports.
    Export,
    /// Sealed identity vaults (ciphertext; the key is the protection officer's own).
    ReadVault,
    /// Purging an encounter or its vault.
    Purge,
    /// Enrolling, rotating and revoking devices.
    ManageDevices,
    /// Reading and exporting the audit log.
    ReadAudit,
    /// Listing its team's devices and approving those awaiting approval.
    ApproveDevices,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::Sync,
        Permission::ReadMap,
        Permission::ReadEncounter,
        Permission::ReadHealth,
        Permission::Export,
        Permission::ReadVault,
        Permission::Purge,
        Permission::ManageDevices,
        Permission::ReadAudit,
        Permission::ApproveDevices,
    ];

    /// In words, for refusals.
    pub fn describe(self) -> &'static str {
        match self {
            Permission::Sync => "syncing encounters",
            Permission::ReadMap => "the map, stats and event stream",
            Permission::ReadEncounter => "reading encounter records",
            Permission::ReadHealth => "reading health detail",
            Permission::Export => "exporting",
            Permission::ReadVault => "reading identity vaults",
            Permission::Purge => "purging",
            Permission::ManageDevices => "enrolling and revoking devices",
            Permission::ReadAudit => "reading the audit log",
            Permission::ApproveDevices => "approving a team's devices",
        }
    }
}

/// Whether `role` may do `permission` at all (before any team or case scope).
pub fn allows(role: Role, permission: Permission) -> bool {
    use Permission::*;
    match role {
        Role::Field => matches!(permission, Sync | ReadEncounter | ReadHealth),
        Role::TeamLead => matches!(
            permission,
            Sync | ReadMap | ReadEncounter | ReadHealth | Export | ApproveDevices
        ),
        Role::Coordinator => matches!(permission, ReadMap | ReadEncounter | Export),
        Role::ProtectionOfficer => {
            matches!(permission, ReadEncounter | ReadHealth | ReadVault | Purge)
        }
        Role::Administrator => matches!(permission, ManageDevices),
        Role::Auditor => matches!(permission, ReadAudit),
    }
}

/// The roles that may do `permission`, for refusal messages.
pub fn roles_allowed(permission: Permission) -> Vec<Role> {
    Role::ALL
        .into_iter()
        .filter(|role| allows(*role, permission))
        .collect()
}

/// Whether an administrator may enrol a device of `role`, or rotate its token and receive the new
/// one, over HTTP. Only `field` phones: that is the fleet's daily work. Every role that reads more
/// than its own team's sync (team leads, coordinators, protection officers), reads the audit
/// log (auditors) or manages credentials (administrators) is enrolled and rotated only with
/// `auxilio admin device enroll` / `rotate` on the server's own data directory, so holding an
/// administrator's token never turns into case access. Revoking works over HTTP for every role.
pub fn managed_over_http(role: Role) -> bool {
    role == Role::Field
}

/// Refuses with 403 unless the device's role may do `permission` and the device is approved.
pub fn require(device: &Device, permission: Permission) -> Result<(), AccessError> {
    if device.awaiting_approval {
        return Err(AccessError::AwaitingApproval {
            team: device.team.clone(),
        });
    }
    if allows(device.role, permission) {
        return Ok(());
    }
    let allowed: Vec<&str> = roles_allowed(permission)
        .into_iter()
        .map(Role::as_str)
        .collect();
    Err(AccessError::Forbidden(format!(
        "{} is for {} devices; this is a {} device of team `{}`",
        permission.describe(),
        allowed.join(" or "),
        device.role,
        device.team
    )))
}

impl Device {
    /// Whether this device's role reaches encounters of `team` at all (what it may do with
    /// them is [`allows`]'s question).
    pub fn may_see_team(&self, team: &str) -> bool {
        team_scope(self).includes(team)
    }
}

/// The teams a device's role reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamScope {
    All,
    Only(String),
}

impl TeamScope {
    pub fn includes(&self, team: &str) -> bool {
        match self {
            TeamScope::All => true,
            TeamScope::Only(own) => own == team,
        }
    }

    /// The one team to filter by, or `None` for all.
    pub fn team(&self) -> Option<&str> {
        match self {
            TeamScope::All => None,
            TeamScope::Only(own) => Some(own),
        }
    }
}

pub fn team_scope(device: &Device) -> TeamScope {
    match device.role {
        Role::Field | Role::TeamLead => TeamScope::Only(device.team.clone()),
        Role::Coordinator | Role::ProtectionOfficer | Role::Administrator | Role::Auditor => {
            TeamScope::All
        }
    }
}

/// Whether the role reads only protection cases (UASC and missing-person encounters).
pub fn protection_cases_only(role: Role) -> bool {
    role == Role::ProtectionOfficer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_belongs_to_some_role_and_no_role_has_them_all() {
        use Permission::*;
        for permission in Permission::ALL {
            assert!(!roles_allowed(permission).is_empty(), "{permission:?}");
        }
        for role in Role::ALL {
            assert!(
                Permission::ALL.iter().any(|p| !allows(role, *p)),
                "{role} may do everything"
            );
        }
        assert!(!allows(Role::Administrator, ReadEncounter));
        assert!(!allows(Role::Auditor, ReadEncounter));
        assert!(!allows(Role::Coordinator, ReadHealth));
        assert!(!allows(Role::Coordinator, ReadVault));
        assert!(!allows(Role::Coordinator, Sync));
        assert_eq!(roles_allowed(ApproveDevices), vec![Role::TeamLead]);
    }
}
