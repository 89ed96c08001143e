//! `auxilio reindex`: rebuilds merged documents and query indexes from the stored changes.

use anyhow::Context;
use clap::Args;

use super::{DataDirArg, print_json};
use crate::ledger;

#[derive(Debug, Args)]
pub struct ReindexArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReindexArgs) -> anyhow::Result<()> {
    let database = args.data.open(false)?;
    let report = ledger::rebuild(&database, 500, |done, total| {
        eprintln!("reindexed {done}/{total} encounters")
    })
    .context("the rebuild stopped; what was committed stays valid, run it again to finish")?;
    if args.json {
        print_json(&report);
    } else {
        println!(
            "rebuilt {} encounters from {} stored changes ({} still waiting for missing changes)",
            report.encounters, report.changes, report.incomplete
        );
    }
    Ok(())
}
