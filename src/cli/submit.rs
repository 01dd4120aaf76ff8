//! `mnemosyne submit`: pipe work plans into a running supervisor (one started with
//! `--keep-running`) and print their results as they finish, in `supervise`'s format.
//!
//! It never reports success it did not see: if the supervisor stops (or goes away) before
//! every plan has a result, the command fails and names the plans still unfinished, which the
//! supervisor's journal holds for its next start, and those it never took.

use std::fmt;
use std::io::Write;
use std::path::Path;

use serde_json::Value;
use tokio::io::AsyncRead;

use super::stdout::write_line;
use super::supervise::RunOutcome;
use crate::control::{Client, ClientError, ErrorCode, SubmitItem, SubmittedPlan};
use crate::plan::intake::{Origin, PlanReader};
use crate::plan::result::PlanResult;

/// Plans sent per request; each request is answered in full before the next one goes out.
const PLANS_PER_REQUEST: usize = 256;
/// A request stays well below the socket's line limit.
const BYTES_PER_REQUEST: usize = 4 * 1024 * 1024;

/// The supervisor stopped, or the connection to it broke, before every plan sent had a result.
#[derive(Debug, thiserror::Error)]
pub struct Unfinished {
    /// Plans the supervisor journalled (with their ids): its next start finishes them.
    pub unfinished: Vec<(String, Origin)>,
    /// Plans sent but never taken into the journal: they must be submitted again.
    pub not_taken: Vec<Origin>,
    /// The input was read up to here and the rest never sent.
    pub unread_after: Option<Origin>,
    /// Why the answers ended, unless it was the supervisor saying it is stopping.
    #[source]
    pub cause: Option<ClientError>,
}

impl fmt::Display for Unfinished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.cause {
            None => f.write_str("the supervisor stopped")?,
            Some(_) => f.write_str("lost the supervisor")?,
        }
        f.write_str(" before every submitted plan had a result")?;
        if !self.unfinished.is_empty() {
            let plans: Vec<String> = self
                .unfinished
                .iter()
                .map(|(id, origin)| format!("{id} ({origin})"))
                .collect();
            write!(
                f,
                "; {} unfinished, which resume on the supervisor's next start (submit their ids \
                 again then for their results): {}",
                plans.len(),
                plans.join(", ")
            )?;
        }
        if !self.not_taken.is_empty() {
            let plans: Vec<String> = self.not_taken.iter().map(Origin::to_string).collect();
            write!(
                f,
                "; {} not taken, submit them again: {}",
                plans.len(),
                plans.join(", ")
            )?;
        }
        if let Some(origin) = self.unread_after {
            write!(f, "; the input after {origin} was not sent")?;
        }
        Ok(())
    }
}

/// The plans of one request that have no result yet.
#[derive(Default)]
struct Outstanding {
    /// Sent, in input order, with the id the supervisor admitted each under.
    plans: Vec<(Origin, Option<String>)>,
}

impl Outstanding {
    fn admitted(&mut self, origin: Origin, id: String) {
        if let Some((_, admitted)) = self.plans.iter_mut().find(|(sent, _)| *sent == origin) {
            *admitted = Some(id);
        }
    }

    fn answered(&mut self, result: &Value) {
        let line = result["line"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok());
        let element = result["element"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok());
        let origin = Origin::from_parts(line, element);
        if let Some(index) = self.plans.iter().position(|(sent, _)| *sent == origin) {
            self.plans.remove(index);
        }
    }

    fn into_error(self, unread_after: Option<Origin>, cause: Option<ClientError>) -> Unfinished {
        let mut unfinished = Vec::new();
        let mut not_taken = Vec::new();
        for (origin, id) in self.plans {
            match id {
                Some(id) => unfinished.push((id, origin)),
                None => not_taken.push(origin),
            }
        }
        Unfinished {
            unfinished,
            not_taken,
            unread_after,
            cause,
        }
    }
}

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
    let mut last_read = None;
    let mut print = |result: &Value| -> std::io::Result<()> {
        all_succeeded &= result["status"] == "succeeded";
        write_line(out, &result.to_string()).map(|_| ())
    };
    let mut input_ended = false;
    while !input_ended {
        match reader.next().await {
            None => input_ended = true,
            Some(item) => {
                last_read = Some(item.origin);
                match item.plan {
                    // The same precise error `supervise` gives, without a round trip.
                    Err(error) => {
                        let result = PlanResult::rejected(
                            None,
                            item.origin.position(),
                            vec![format!("{}: {error}", item.origin)],
                        );
                        print(&serde_json::to_value(&result).expect("results serialise"))?;
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
            let mut outstanding = Outstanding {
                plans: plans
                    .iter()
                    .map(|plan| (Origin::from_parts(plan.line, plan.element), None))
                    .collect(),
            };
            let mut failure = None;
            let answered = client
                .submit(plans, |item| match item {
                    SubmitItem::Admitted { id, line, element } => {
                        outstanding.admitted(Origin::from_parts(line, element), id);
                    }
                    SubmitItem::Result(result) => {
                        outstanding.answered(&result);
                        if let Err(error) = print(&result) {
                            failure.get_or_insert(error);
                        }
                    }
                })
                .await;
            if let Some(error) = failure {
                return Err(error.into());
            }
            match answered {
                Ok(()) => {}
                Err(ClientError::Refused {
                    code: ErrorCode::ShuttingDown,
                    ..
                }) => {
                    let unread_after = (!input_ended).then_some(last_read).flatten();
                    return Err(outstanding.into_error(unread_after, None).into());
                }
                Err(
                    error @ (ClientError::Closed
                    | ClientError::Io(_)
                    | ClientError::TooLong
                    | ClientError::Unreadable(_)),
                ) => {
                    let unread_after = (!input_ended).then_some(last_read).flatten();
                    return Err(outstanding.into_error(unread_after, Some(error)).into());
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(if all_succeeded {
        RunOutcome::AllSucceeded
    } else {
        RunOutcome::SomeFailed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_without_a_result_are_named_as_unfinished_or_not_taken() {
        let mut outstanding = Outstanding {
            plans: (1..=4).map(|line| (Origin::Line(line), None)).collect(),
        };
        outstanding.admitted(Origin::Line(1), "done".into());
        outstanding.admitted(Origin::Line(2), "plan-x-submitted-1".into());
        outstanding.answered(&serde_json::json!({"id": "done", "status": "succeeded", "line": 1}));
        outstanding.answered(&serde_json::json!({"id": null, "status": "rejected", "line": 3}));
        let error = outstanding.into_error(Some(Origin::Line(9)), None);
        assert_eq!(
            error.to_string(),
            "the supervisor stopped before every submitted plan had a result; 1 unfinished, \
             which resume on the supervisor's next start (submit their ids again then for their \
             results): plan-x-submitted-1 (line 2); 1 not taken, submit them again: line 4; the \
             input after line 9 was not sent"
        );
    }
}
