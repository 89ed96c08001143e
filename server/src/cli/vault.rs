//! `auxilio vault`: the protection officer's tools. `keygen` makes the officer's key pair on
//! their own machine, `open` fetches one encounter's sealed vault over HTTP and decrypts it
//! locally, and `reseal` moves every stored vault to the server's current keys (key rotation).
//! The secret key never leaves this machine and is never sent to the server.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use auxilio_core::EncounterId;
use auxilio_core::vault::{self, VaultError};
use clap::{Args, Subcommand};

use super::{print_json, print_line};
use crate::client;

#[derive(Debug, Args)]
pub struct VaultArgs {
    #[command(subcommand)]
    command: VaultCommand,
}

/// Where the server is and the protection officer's device token.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The server's address.
    #[arg(long, env = "AUXILIO_SERVER")]
    server: String,
    /// The protection officer's device token (from `auxilio admin device enroll --role
    /// protection-officer`).
    #[arg(long, env = "AUXILIO_TOKEN", hide_env_values = true)]
    token: String,
    /// The officer's identity file (from `auxilio vault keygen`).
    #[arg(long)]
    identity: PathBuf,
}

#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Make a protection officer's key pair: writes the secret identity to FILE (mode 0600) and
    /// prints the public key to enrol with `auxilio admin vault-key add`.
    #[command(after_help = "Example:\n  auxilio vault keygen --out ~/.auxilio/officer.key")]
    Keygen {
        /// Where to write the identity; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
        /// Print one JSON object on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Fetch an encounter's sealed vault and open it here with the officer's identity; prints
    /// the contents as JSON. Contents that do not match the digest the phone sealed them under
    /// (resealed by someone with other contents) are not shown: a warning names the envelope and
    /// the command fails.
    #[command(
        after_help = "Example:\n  auxilio vault open ENCOUNTER_ID --server https://auxilio.example --token auxilio_... --identity ~/.auxilio/officer.key"
    )]
    Open {
        encounter: EncounterId,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Key rotation: re-encrypt every stored vault this identity opens to the server's current
    /// (not retired) keys. Add the new key and retire the old one first, then run it with the
    /// old key's identity: every vault moves to the current keys.
    #[command(
        after_help = "Example (rotating from key A to key B):\n  auxilio admin vault-key add age1...B --label \"new officer\"\n  auxilio admin vault-key retire age1...A\n  auxilio vault reseal --server https://auxilio.example --token auxilio_... --identity a.key"
    )]
    Reseal {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(args: VaultArgs) -> anyhow::Result<()> {
    match args.command {
        VaultCommand::Keygen { out, json } => keygen(&out, json),
        VaultCommand::Open { encounter, server } => open(encounter, &server),
        VaultCommand::Reseal { server } => reseal(&server),
    }
}

fn keygen(out: &Path, json: bool) -> anyhow::Result<()> {
    let (secret, public) = vault::generate_identity();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(out).with_context(|| {
        format!(
            "cannot create {} (an existing identity is never overwritten: choose another path)",
            out.display()
        )
    })?;
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    file.write_all(format!("# created: {created}\n# public key: {public}\n{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    let next = format!("auxilio admin vault-key add {public} --label \"YOUR NAME\"");
    if json {
        print_json(&serde_json::json!({
            "public_key": public, "identity_file": out, "next": next,
        }));
    } else {
        print_line(&format!(
            "identity written to {} (keep it secret: it opens every vault sealed to it)\npublic key: {public}\nnext, on the server: {next}",
            out.display()
        ));
    }
    Ok(())
}

fn read_identity(path: &Path) -> anyhow::Result<String> {
    let identity = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the identity file {}", path.display()))?;
    vault::public_key_of(&identity)
        .with_context(|| format!("{} is not an identity file", path.display()))?;
    Ok(identity)
}

fn open(encounter: EncounterId, server: &ServerArgs) -> anyhow::Result<()> {
    let identity = read_identity(&server.identity)?;
    let public = vault::public_key_of(&identity)?;
    let answer = client::fetch_vault(&server.server, &server.token, encounter)?;
    if answer.envelopes.is_empty() {
        bail!(
            "encounter {encounter} has no sealed vault on the server (none was sealed, or it is not uploaded yet)"
        );
    }
    let mut opened = Vec::new();
    let mut not_for_me = Vec::new();
    let mut altered = Vec::new();
    for envelope in &answer.envelopes {
        match vault::open(&envelope.sealed, &identity) {
            Ok(contents) => opened.push(serde_json::json!({
                "id": vault::hex(&envelope.sealed.id),
                "sealed_at": envelope.sealed.sealed_at,
                "contents": contents,
            })),
            Err(VaultError::NotARecipient { recipients }) => not_for_me.push(recipients),
            Err(err @ VaultError::ContentsAltered) => {
                eprintln!(
                    "envelope {} of encounter {encounter}: {err}",
                    vault::hex(&envelope.sealed.id)
                );
                altered.push(vault::hex(&envelope.sealed.id));
            }
            Err(other) => bail!(
                "envelope {} of encounter {encounter}: {other}",
                vault::hex(&envelope.sealed.id)
            ),
        }
    }
    if opened.is_empty() && !altered.is_empty() {
        bail!(
            "no envelope of encounter {encounter} could be trusted: {} were altered after sealing (see above)",
            altered.len()
        );
    }
    if opened.is_empty() {
        bail!(
            "your key {public} is not among the recipients of encounter {encounter}'s vault (sealed to {}): ask an officer whose key it is sealed to for `auxilio vault reseal`, after an administrator adds your key",
            not_for_me.join("; ")
        );
    }
    if !not_for_me.is_empty() {
        eprintln!(
            "{} envelope(s) of this encounter are not sealed to your key and were left closed",
            not_for_me.len()
        );
    }
    print_json(&serde_json::json!({ "encounter": encounter, "vaults": opened }));
    if !altered.is_empty() {
        bail!(
            "envelope(s) {} of encounter {encounter} were altered after sealing and were not shown; only the contents printed above match what was sealed",
            altered.join(", ")
        );
    }
    Ok(())
}

/// What `vault reseal` did.
#[derive(Debug, Default, serde::Serialize)]
struct ResealReport {
    resealed: u64,
    already_current: u64,
    not_openable_with_this_identity: u64,
    /// Envelopes whose contents do not match their digest: left as they are for a person.
    contents_altered: u64,
}

fn same_keys(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

fn reseal(server: &ServerArgs) -> anyhow::Result<()> {
    let identity = read_identity(&server.identity)?;
    let mut report = ResealReport::default();
    let mut after: Option<String> = None;
    let mut seen = 0u64;
    loop {
        let page = client::list_vaults(&server.server, &server.token, after.as_deref())?;
        let current = page.current_recipients.clone();
        if current.is_empty() {
            bail!(
                "the server has no current vault key to reseal to: add one with `auxilio admin vault-key add`"
            );
        }
        for summary in &page.envelopes {
            seen += 1;
            if same_keys(&summary.recipients, &current) {
                report.already_current += 1;
                continue;
            }
            let stored = client::fetch_vault(&server.server, &server.token, summary.encounter)?;
            let Some(envelope) = stored
                .envelopes
                .iter()
                .find(|e| vault::hex(&e.sealed.id) == summary.id)
            else {
                continue;
            };
            match vault::reseal(&envelope.sealed, &identity, &current) {
                Ok(resealed) => {
                    client::put_resealed(&server.server, &server.token, &resealed)?;
                    report.resealed += 1;
                }
                Err(VaultError::NotARecipient { .. }) => {
                    report.not_openable_with_this_identity += 1;
                }
                Err(err @ VaultError::ContentsAltered) => {
                    eprintln!(
                        "envelope {} of encounter {}: {err}",
                        summary.id, summary.encounter
                    );
                    report.contents_altered += 1;
                }
                Err(other) => bail!(
                    "envelope {} of encounter {}: {other}",
                    summary.id,
                    summary.encounter
                ),
            }
            eprintln!(
                "{seen} envelopes seen: {} resealed, {} already on the current keys, {} not openable with this identity",
                report.resealed, report.already_current, report.not_openable_with_this_identity
            );
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    print_json(&report);
    if report.contents_altered > 0 {
        bail!(
            "{} vault(s) hold contents that do not match what was sealed and were left as they are: see the warnings above",
            report.contents_altered
        );
    }
    if report.not_openable_with_this_identity > 0 {
        bail!(
            "{} vault(s) are not sealed to this identity and were left as they are: run `auxilio vault reseal` with an identity they are sealed to before retiring its key",
            report.not_openable_with_this_identity
        );
    }
    Ok(())
}
