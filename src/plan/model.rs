//! The work plan data model: plans, tasks and options, as read from the input and as sent to
//! workers and the journal (the same JSON shape both ways).

use std::fmt;
use std::ops::RangeInclusive;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The priority of a plan that does not give one.
pub const DEFAULT_PRIORITY: u8 = 5;

/// The priorities a plan may have; higher runs first.
pub const PRIORITY_RANGE: RangeInclusive<u8> = 0..=10;

/// How many times a task may be reviewed and redone when the plan does not say.
pub const DEFAULT_MAX_REVIEW_ATTEMPTS: u32 = 3;

/// The values `options.max_review_attempts` may take.
pub const MAX_REVIEW_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=10;

/// One work plan, as documented in `protocol/plan.schema.json`.
///
/// Requirement fields (`prompt`, `tech_stack`, `success_criteria`) are optional here: whether a
/// plan says enough is judged by a worker, not by the parser.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Absent in the input when the caller leaves it to the supervisor; intake assigns one
    /// before the plan goes anywhere, so [`Plan::id`] can be used from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tech_stack: Option<StringList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_criteria: Option<StringList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<StringList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// Kept as given (absent stays absent); [`Plan::priority`] applies the default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_priority"
    )]
    pub priority: Option<u8>,
    /// May be empty: the orchestrator then makes the tasks from the plan's prompt.
    #[serde(default)]
    pub tasks: Vec<TaskSpec>,
    /// Always serialised with its effective values, so workers need not know the defaults.
    #[serde(default)]
    pub options: PlanOptions,
}

impl Plan {
    /// The plan's id.
    ///
    /// # Panics
    ///
    /// If no id has been assigned yet. Every plan gets one at intake, before it is scheduled,
    /// journaled or sent to a worker, so only code that runs before that may see `None`, and
    /// it must read the `id` field instead.
    pub fn id(&self) -> &str {
        self.id
            .as_deref()
            .expect("intake assigns every plan an id before anything asks for it")
    }

    /// The plan's priority, [`DEFAULT_PRIORITY`] when it gives none.
    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }
}

/// One task of a plan, given by the caller or made by the orchestrator.
// `remote = "Self"` turns the derives into inherent functions, which the trait impls below
// wrap so that a task is read only from a JSON object (see [`ObjectOnly`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct TaskSpec {
    pub id: String,
    pub prompt: String,
    /// Ids of tasks of the same plan that must succeed before this one starts.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "string_vec"
    )]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tech_stack: Option<StringList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_criteria: Option<StringList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<StringList>,
}

/// Switches that change how a plan is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct PlanOptions {
    /// Whether validation sends a plan with vague requirements back with questions.
    #[serde(default = "default_challenge_vague_requirements")]
    pub challenge_vague_requirements: bool,
    /// How many times one task is executed and reviewed before it counts as failed.
    #[serde(
        default = "default_max_review_attempts",
        deserialize_with = "max_review_attempts"
    )]
    pub max_review_attempts: u32,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            challenge_vague_requirements: default_challenge_vague_requirements(),
            max_review_attempts: DEFAULT_MAX_REVIEW_ATTEMPTS,
        }
    }
}

fn default_challenge_vague_requirements() -> bool {
    true
}

fn default_max_review_attempts() -> u32 {
    DEFAULT_MAX_REVIEW_ATTEMPTS
}

impl Serialize for TaskSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskSpec::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for TaskSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        TaskSpec::deserialize(ObjectOnly::new(deserializer, "a task object"))
    }
}

impl Serialize for PlanOptions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        PlanOptions::serialize(self, serializer)
    }
}

impl<'de> Deserialize<'de> for PlanOptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PlanOptions::deserialize(ObjectOnly::new(deserializer, "an object of options"))
    }
}

/// A deserializer that reads a struct only from a map (a JSON object).
///
/// serde's derived structs also accept a sequence of field values, so without it
/// `"options": []` or `"tasks": [["a", "prompt"]]` would be taken for plans the schema forbids,
/// and a wrong type would be reported as "expected struct TaskSpec".
struct ObjectOnly<D> {
    inner: D,
    expecting: &'static str,
}

impl<D> ObjectOnly<D> {
    fn new(inner: D, expecting: &'static str) -> Self {
        Self { inner, expecting }
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(MapVisitor {
            inner: visitor,
            expecting: self.expecting,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Passes a map on to the struct's own visitor and refuses everything else, naming what a
/// user would call the expected value.
struct MapVisitor<V> {
    inner: V,
    expecting: &'static str,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for MapVisitor<V> {
    type Value = V::Value;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(map)
    }
}

/// A field that the input may give as one string or as a list of strings; it is always
/// serialised as a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl StringList {
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<String>> for StringList {
    fn from(items: Vec<String>) -> Self {
        Self(items)
    }
}

impl From<&str> for StringList {
    fn from(item: &str) -> Self {
        Self(vec![item.to_owned()])
    }
}

impl<'a> IntoIterator for &'a StringList {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl Serialize for StringList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

// A hand-written visitor rather than `#[serde(untagged)]`, whose error ("data did not match
// any variant") names neither what was expected nor what was found.
impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StringListVisitor;

        impl<'de> Visitor<'de> for StringListVisitor {
            type Value = StringList;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<StringList, E> {
                Ok(StringList(vec![value.to_owned()]))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<StringList, E> {
                Ok(StringList(vec![value]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<StringList, A::Error> {
                collect_strings(seq).map(StringList)
            }
        }

        deserializer.deserialize_any(StringListVisitor)
    }
}

/// Deserialises a list of strings whose error says so, instead of serde's "a sequence".
fn string_vec<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    struct StringVecVisitor;

    impl<'de> Visitor<'de> for StringVecVisitor {
        type Value = Vec<String>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a list of strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Vec<String>, A::Error> {
            collect_strings(seq)
        }
    }

    deserializer.deserialize_seq(StringVecVisitor)
}

fn collect_strings<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<String>, A::Error> {
    let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
    while let Some(item) = seq.next_element::<String>()? {
        items.push(item);
    }
    Ok(items)
}

/// The message for an integer outside its allowed range, shared by parsing and
/// [`crate::plan::intake::check_plan`] so both say the same thing.
pub(crate) fn out_of_range(start: i128, end: i128, value: i128) -> String {
    format!("must be between {start} and {end}, got {value}")
}

/// Accepts any JSON integer and checks the range itself, so `300` or `-1` get the same
/// message as `12` rather than serde's "expected u8".
struct IntegerIn {
    start: i128,
    end: i128,
}

impl<'de> Visitor<'de> for IntegerIn {
    type Value = i128;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "an integer between {} and {}",
            self.start, self.end
        )
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<i128, E> {
        self.check(i128::from(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<i128, E> {
        self.check(i128::from(value))
    }

    // JSON Schema counts `5.0` as an integer, and serde_json reads an integer too large for
    // 64 bits as a float: both are judged by their value, so `1e30` is out of range rather
    // than "a floating point".
    fn visit_f64<E: de::Error>(self, value: f64) -> Result<i128, E> {
        if value.fract() != 0.0 || !value.is_finite() {
            return Err(E::invalid_type(de::Unexpected::Float(value), &self));
        }
        if value < self.start as f64 || value > self.end as f64 {
            return Err(E::custom(format!(
                "must be between {} and {}, got {value}",
                self.start, self.end
            )));
        }
        // Integral and within bounds that are themselves i128, so the cast is exact.
        self.check(value as i128)
    }
}

impl IntegerIn {
    fn check<E: de::Error>(&self, value: i128) -> Result<i128, E> {
        if (self.start..=self.end).contains(&value) {
            Ok(value)
        } else {
            Err(E::custom(out_of_range(self.start, self.end, value)))
        }
    }

    fn of<T: Copy + Into<i128>>(range: &RangeInclusive<T>) -> Self {
        Self {
            start: (*range.start()).into(),
            end: (*range.end()).into(),
        }
    }
}

/// A priority, as a type of its own so that `Option` handles `null` around it.
struct Priority(u8);

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = deserializer.deserialize_i64(IntegerIn::of(&PRIORITY_RANGE))?;
        let value = u8::try_from(value).expect("the visitor admits only values in PRIORITY_RANGE");
        Ok(Priority(value))
    }
}

fn optional_priority<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    Ok(Option::<Priority>::deserialize(deserializer)?.map(|Priority(value)| value))
}

fn max_review_attempts<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = deserializer.deserialize_i64(IntegerIn::of(&MAX_REVIEW_ATTEMPTS_RANGE))?;
    Ok(u32::try_from(value).expect("the visitor admits only values in MAX_REVIEW_ATTEMPTS_RANGE"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_string_list_accepts_one_string_or_a_list_and_serialises_as_a_list() {
        let one: StringList = serde_json::from_value(json!("rust")).expect("a string");
        let many: StringList = serde_json::from_value(json!(["rust", "tokio"])).expect("a list");
        assert_eq!(one.as_slice(), ["rust"]);
        assert_eq!(many.as_slice(), ["rust", "tokio"]);
        assert_eq!(
            serde_json::to_value(&one).expect("serialises"),
            json!(["rust"])
        );
    }

    #[test]
    fn a_string_list_of_the_wrong_type_says_what_it_expected() {
        let error = serde_json::from_value::<StringList>(json!(5)).expect_err("a number");
        assert_eq!(
            error.to_string(),
            "invalid type: integer `5`, expected a string or a list of strings"
        );
        let error = serde_json::from_value::<StringList>(json!(["a", 5])).expect_err("a number");
        assert_eq!(
            error.to_string(),
            "invalid type: integer `5`, expected a string"
        );
    }

    #[test]
    fn defaults_apply_when_the_plan_omits_priority_and_options() {
        let plan: Plan = serde_json::from_value(json!({"prompt": "p"})).expect("a plan");
        assert_eq!(plan.priority(), DEFAULT_PRIORITY);
        assert_eq!(plan.options, PlanOptions::default());
        assert!(plan.options.challenge_vague_requirements);
        assert_eq!(plan.options.max_review_attempts, 3);
        assert_eq!(plan.priority, None);
    }

    #[test]
    fn a_plan_serialises_back_to_the_input_shape() {
        let input = json!({
            "id": "p1",
            "prompt": "build it",
            "tech_stack": ["rust"],
            "success_criteria": ["tests pass", "docs"],
            "constraints": ["no unsafe"],
            "scope": "cli",
            "deployment": "binary",
            "priority": 7,
            "tasks": [
                {"id": "a", "prompt": "first"},
                {"id": "b", "prompt": "second", "depends_on": ["a"], "tech_stack": ["python"]}
            ],
            "options": {"challenge_vague_requirements": false, "max_review_attempts": 2}
        });
        let plan: Plan = serde_json::from_value(input.clone()).expect("a plan");
        assert_eq!(serde_json::to_value(&plan).expect("serialises"), input);
        let again: Plan = serde_json::from_value(input).expect("a plan");
        assert_eq!(again, plan);
    }

    #[test]
    fn a_minimal_plan_serialises_with_its_effective_options() {
        let plan: Plan =
            serde_json::from_value(json!({"id": "p", "tech_stack": "go"})).expect("a plan");
        assert_eq!(
            serde_json::to_value(&plan).expect("serialises"),
            json!({
                "id": "p",
                "tech_stack": ["go"],
                "tasks": [],
                "options": {"challenge_vague_requirements": true, "max_review_attempts": 3}
            })
        );
    }

    #[test]
    fn priority_and_review_attempts_outside_their_range_are_rejected_with_the_range() {
        for (input, message) in [
            (json!({"priority": 12}), "must be between 0 and 10, got 12"),
            (json!({"priority": -1}), "must be between 0 and 10, got -1"),
            (
                json!({"priority": 300}),
                "must be between 0 and 10, got 300",
            ),
            (
                json!({"priority": 2.5}),
                "invalid type: floating point `2.5`, expected an integer between 0 and 10",
            ),
            (
                json!({"options": {"max_review_attempts": 0}}),
                "must be between 1 and 10, got 0",
            ),
        ] {
            let error = serde_json::from_value::<Plan>(input).expect_err("out of range");
            assert_eq!(error.to_string(), message);
        }
        let plan: Plan = serde_json::from_value(json!({"priority": null})).expect("null is absent");
        assert_eq!(plan.priority(), DEFAULT_PRIORITY);
    }

    #[test]
    fn tasks_and_options_are_read_only_from_objects() {
        for (input, message) in [
            (
                json!({"options": []}),
                "invalid type: sequence, expected an object of options",
            ),
            (
                json!({"options": [false, 2]}),
                "invalid type: sequence, expected an object of options",
            ),
            (
                json!({"tasks": [42]}),
                "invalid type: integer `42`, expected a task object",
            ),
            (
                json!({"tasks": [["a", "prompt"]]}),
                "invalid type: sequence, expected a task object",
            ),
        ] {
            let error = serde_json::from_value::<Plan>(input.clone()).expect_err("not an object");
            assert_eq!(error.to_string(), message, "{input}");
            let text = input.to_string();
            let error = serde_json::from_str::<Plan>(&text).expect_err("not an object");
            assert!(error.to_string().starts_with(message), "{text}: {error}");
        }
    }

    #[test]
    fn integral_numbers_are_judged_by_value_whatever_their_notation() {
        let plan: Plan = serde_json::from_str(r#"{"priority": 7.0}"#).expect("7.0 is 7");
        assert_eq!(plan.priority, Some(7));
        for (text, message) in [
            (
                r#"{"priority": 99999999999999999999999999}"#,
                "must be between 0 and 10, got 100000000000000000000000000",
            ),
            (
                r#"{"priority": -9223372036854775809}"#,
                "must be between 0 and 10, got -9223372036854776000",
            ),
            (
                r#"{"options": {"max_review_attempts": 1e3}}"#,
                "must be between 1 and 10, got 1000",
            ),
            (
                r#"{"priority": 2.5}"#,
                "invalid type: floating point `2.5`, expected an integer between 0 and 10",
            ),
        ] {
            let error = serde_json::from_str::<Plan>(text).expect_err("rejected");
            assert!(error.to_string().starts_with(message), "{text}: {error}");
        }
    }

    #[test]
    fn depends_on_of_the_wrong_type_asks_for_a_list_of_strings() {
        let error = serde_json::from_value::<TaskSpec>(
            json!({"id": "a", "prompt": "p", "depends_on": "b"}),
        )
        .expect_err("a string");
        assert_eq!(
            error.to_string(),
            "invalid type: string \"b\", expected a list of strings"
        );
    }

    #[test]
    #[should_panic(expected = "intake assigns every plan an id")]
    fn asking_for_the_id_of_a_plan_without_one_panics() {
        let _ = Plan::default().id();
    }
}
