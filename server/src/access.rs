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
//! | `ReadAudit`       |       |           |             |                    |               | all     |
//!
//! "team" means the device's own team only; health detail is what a casualty sub-record holds
//! beyond its triage category, sex, age band and disposition.

use crate::directory::{Device, Role};
use crate::error::AppError;

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
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::Sync,
        Permission::ReadMap,
        Permission::ReadEncounter,
        Permission::ReadHealth,
        Permission::Export,
        Permission::ReadVault,
        Permission::Purge,
        Permission::ManageDevices,
        Permission::ReadAudit,
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
            Sync | ReadMap | ReadEncounter | ReadHealth | Export
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

/// Refuses with 403 unless the device's role may do `permission`.
pub fn require(device: &Device, permission: Permission) -> Result<(), AppError> {
    if allows(device.role, permission) {
        return Ok(());
    }
    let allowed: Vec<&str> = roles_allowed(permission)
        .into_iter()
        .map(Role::as_str)
        .collect();
    Err(AppError::Forbidden(format!(
        "{} is for {} devices; this is a {} device of team `{}`",
        permission.describe(),
        allowed.join(" or "),
        device.role,
        device.team
    )))
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

/// Casualty fields every role that reads a record sees: enough to count, triage and follow a
/// hand-over, nothing clinical and no exact age.
const CASUALTY_FIELDS_WITHOUT_HEALTH: [&str; 6] = [
    "sex",
    "age_band",
    "triage",
    "disposition",
    "uasc",
    "withdrawn_at",
];

/// Encounter fields restricted like health data (the brief: trafficking indicators).
const RESTRICTED_ENCOUNTER_FIELDS: [&str; 1] = ["trafficking_indicators"];

/// Removes health detail from an encounter's JSON and from its conflicts, for a role without
/// [`Permission::ReadHealth`]. Returns how many values were left out, so the answer can say so.
pub fn redact_health(
    encounter: &mut serde_json::Value,
    conflicts: &mut Vec<auxilio_core::document::Conflict>,
) -> usize {
    let mut removed = 0;
    if let Some(fields) = encounter.as_object_mut() {
        for field in RESTRICTED_ENCOUNTER_FIELDS {
            // Always left out; counted only when it held something.
            let held = fields.remove(field).is_some_and(|value| {
                !(value.is_null() || value.as_array().is_some_and(Vec::is_empty))
            });
            removed += usize::from(held);
        }
    }
    if let Some(casualties) = encounter
        .get_mut("casualties")
        .and_then(|c| c.as_object_mut())
    {
        for casualty in casualties.values_mut() {
            if let Some(fields) = casualty.as_object_mut() {
                let before = fields.len();
                fields.retain(|key, _| CASUALTY_FIELDS_WITHOUT_HEALTH.contains(&key.as_str()));
                removed += before - fields.len();
            }
        }
    }
    let before = conflicts.len();
    conflicts.retain(|conflict| !is_health_path(&conflict.path));
    removed + (before - conflicts.len())
}

/// Whether a dotted field path (as in a conflict) holds health or restricted detail.
fn is_health_path(path: &str) -> bool {
    let mut parts = path.split('.');
    match parts.next() {
        Some(first) if RESTRICTED_ENCOUNTER_FIELDS.contains(&first) => true,
        Some("casualties") => {
            let _person = parts.next();
            parts
                .next()
                .is_some_and(|field| !CASUALTY_FIELDS_WITHOUT_HEALTH.contains(&field))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_detail_is_removed_from_the_record_and_its_conflicts() {
        use auxilio_core::document::{Conflict, ConflictingValue};
        let mut encounter = serde_json::json!({
            "team": "sonora",
            "trafficking_indicators": ["debt_bondage"],
            "casualties": { "p1": {
                "sex": "f", "age_years": 15, "age_band": "12-17",
                "triage": {"method": "start", "category": "red"},
                "vitals": [{"at": "2026-01-01T00:00:00Z", "pulse": 130}],
                "conditions": ["heat_stroke"], "uasc": {"dif_unit": "Hermosillo"}
            }}
        });
        let value = |v: serde_json::Value| ConflictingValue {
            value: v,
            device: None,
        };
        let mut conflicts = vec![
            Conflict {
                path: "casualties.p1.vitals".into(),
                values: vec![value(1.into()), value(2.into())],
            },
            Conflict {
                path: "casualties.p1.triage".into(),
                values: vec![value("red".into()), value("yellow".into())],
            },
            Conflict {
                path: "status".into(),
                values: vec![value("open".into()), value("closed".into())],
            },
        ];
        let removed = redact_health(&mut encounter, &mut conflicts);
        assert_eq!(removed, 5);
        let casualty = &encounter["casualties"]["p1"];
        assert!(casualty.get("vitals").is_none() && casualty.get("conditions").is_none());
        assert!(casualty.get("age_years").is_none());
        assert_eq!(casualty["triage"]["category"], "red");
        assert!(encounter.get("trafficking_indicators").is_none());
        let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["casualties.p1.triage", "status"]);
    }

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
    }
}
