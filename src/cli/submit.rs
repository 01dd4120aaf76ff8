//! `mnemosyne submit`: pipe work plans into a running supervisor (one started with
//! `--keep-running`) and print their results as they finish, in `supervise`'s format.

use std::io::Write;
use std::path::Path;

use serde_json::Value;
use tokio::io::AsyncRead;

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::{Client, SubmittedPlan};
use crate::plan::intake::PlanReader;
use crate::plan::result::PlanResult;

/// Plans sent per request; each request is answered in full before the next one goes out.
const PLANS_PER_REQUEST: usize = 256;
/// A request stays well below the socket's line limit.
const BYTES_PER_REQUEST: usize = 4 * 1024 * 1024;

pub async fn run(
    state_dir: &Path,
    input: impl AsyncRead + Unpin,
    max_line_bytes: usize,
    out: &mut impl Write,
) -> anyhow::Result<RunOutcome> {
    let mut client = Client::connect(state_dir).await?;
    let mut reader = PlanReader::new(input, max_line_bytes);
    let mut all_succeeded = true;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    let mut print = |result: Value| -> std::io::Result<()> {
        all_succeeded &= result["status"] == "succeeded";
        write_line(out, &result.to_string()).map(|_| ())
    };
    let mut input_ended = false;
    while !input_ended {
        match reader.next().await {
            None => input_ended = true,
            Some(item) => {
                match item.plan {
                    // The same precise error `supervise` gives, without a round trip.
                    Err(error) => {
                        let result = PlanResult::rejected(
                            None,
                            item.origin.position(),
                            vec![format!("{}: {error}", item.origin)],
                        );
                        print(serde_json::to_value(&result).expect("results serialise"))?;
                    }
                    Ok(plan) => {
                        let plan = serde_json::to_value(&plan).expect("plans serialise");
                        batch_bytes += plan.to_string().len();
                        batch.push(SubmittedPlan {
                            plan,
                            line: item.origin.line(),
                            element: item.origin.element(),
                        });
                    }
                }
            }
        }
        let full = batch.len() >= PLANS_PER_REQUEST || batch_bytes >= BYTES_PER_REQUEST;
        if !batch.is_empty() && (full || input_ended) {
            let plans = std::mem::take(&mut batch);
            batch_bytes = 0;
            let mut failure = None;
            client
                .submit(plans, |result| {
                    if let Err(error) = print(result) {
                        failure.get_or_insert(error);
                    }
                })
                .await?;
            if let Some(error) = failure {
                return Err(error.into());
            }
        }
    }
    Ok(if all_succeeded {
        RunOutcome::AllSucceeded
    } else {
        RunOutcome::SomeFailed
    })
}
