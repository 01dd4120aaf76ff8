//! The result line of one work plan, as printed on stdout and stored in the journal.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::DeliveryFailure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    Succeeded,
    Failed,
    Rejected,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// Adds the `usage` object of a worker result, ignoring what is missing or malformed.
    pub fn add_from(&mut self, result: &Value) {
        let usage = &result["usage"];
        self.input_tokens += usage["input_tokens"].as_u64().unwrap_or(0);
        self.output_tokens += usage["output_tokens"].as_u64().unwrap_or(0);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskOutcome {
    pub id: String,
    pub status: PlanStatus,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The most deliveries any request of this task needed (2 or more: a worker was lost).
    pub deliveries: u32,
}

/// Where an input plan came from, for results that must point back at the input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPosition {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanResult {
    /// Absent only for input that could not be read far enough to find an id.
    pub id: Option<String>,
    pub status: PlanStatus,
    #[serde(flatten)]
    pub position: InputPosition,
    pub attempts: u32,
    pub tasks: Vec<TaskOutcome>,
    pub output: Option<String>,
    pub review: Option<Value>,
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub questions: Vec<String>,
    pub usage: Usage,
    pub duration_ms: u64,
    pub provider: Option<String>,
    /// The most deliveries any request of this plan needed.
    pub deliveries: u32,
    /// Lost deliveries of a quarantined request, with the stderr tail of each death.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<DeliveryFailure>,
    /// Set when this result comes from the journal of an earlier run rather than a new run.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// The plan failed because of its surroundings (no usable agent of a role, a rejected
    /// key, a provider that stayed unavailable), not because of what it asks: submitting its
    /// id again runs it again instead of replaying this result.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retryable: bool,
}

impl PlanResult {
    pub fn new(id: Option<String>, status: PlanStatus) -> Self {
        Self {
            id,
            status,
            position: InputPosition::default(),
            attempts: 0,
            tasks: Vec::new(),
            output: None,
            review: None,
            errors: Vec::new(),
            issues: Vec::new(),
            questions: Vec::new(),
            usage: Usage::default(),
            duration_ms: 0,
            provider: None,
            deliveries: 0,
            failures: Vec::new(),
            replayed: false,
            retryable: false,
        }
    }

    /// A result for input that is not a usable plan.
    pub fn rejected(id: Option<String>, position: InputPosition, errors: Vec<String>) -> Self {
        let mut result = Self::new(id, PlanStatus::Rejected);
        result.position = position;
        result.errors = errors;
        result
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("results always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_appears_in_the_line_only_when_set() {
        let mut result = PlanResult::new(Some("p".into()), PlanStatus::Failed);
        assert!(!result.to_line().contains("retryable"));
        result.retryable = true;
        let line: Value = serde_json::from_str(&result.to_line()).expect("JSON");
        assert_eq!(line["retryable"], true);
    }
}
