"""Tests of mnemosyne.agents.validation: the work-plan rules, their fixes and their order."""

import pytest

from mnemosyne.agents.plan import parse_plan
from mnemosyne.agents.validation import (
    LACKS_DETAIL_QUESTIONS,
    missing_detail,
    vague_terms,
    validate_plan,
    words_of,
)

# Says what (build), why (because, needs), how (using), constraints (must) and scope (only),
# in more than ten words, with no vague term.
GOOD_PROMPT = (
    "Build a REST API for invoices using Python because accounting needs it; "
    "it must only expose read endpoints"
)


def plan(**fields):
    wire = {
        "id": "p1",
        "prompt": GOOD_PROMPT,
        "tech_stack": ["python", "fastapi"],
        "success_criteria": ["every endpoint has a test"],
        "constraints": [],
        "scope": "backend",
        "deployment": "a container on the staging cluster",
        "tasks": [],
    }
    options = fields.pop("options", None)
    wire.update(fields)
    if options is not None:
        wire["options"] = options
    return parse_plan(wire)


def report(**fields):
    return validate_plan(plan(**fields)).to_wire()


def issues(**fields):
    return report(**fields)["issues"]


def test_a_complete_detailed_plan_is_valid_with_no_questions():
    assert report() == {"valid": True, "issues": [], "questions": []}


@pytest.mark.parametrize("prompt", [None, "", "   \n\t"])
def test_a_missing_or_blank_prompt_is_one_issue_and_one_question(prompt):
    assert report(prompt=prompt) == {
        "valid": False,
        "issues": ["Missing prompt/requirements"],
        "questions": ["What is the goal of this work?"],
    }


def test_an_absent_prompt_key_counts_as_missing():
    wire = {"id": "p1", "tech_stack": ["go"], "success_criteria": ["ok"], "deployment": "x"}
    assert validate_plan(parse_plan(wire)).issues == ("Missing prompt/requirements",)


@pytest.mark.parametrize("tech_stack", [None, [], ["", "  "]])
def test_a_missing_or_blank_tech_stack_is_an_issue_and_a_question(tech_stack):
    assert report(tech_stack=tech_stack) == {
        "valid": False,
        "issues": ["Tech stack not specified"],
        "questions": ["What tech stack / technologies should be used?"],
    }


@pytest.mark.parametrize("deployment", [None, "", "  "])
def test_a_missing_deployment_is_a_question_but_not_an_issue(deployment):
    assert report(deployment=deployment) == {
        "valid": True,
        "issues": [],
        "questions": ["Where will this be deployed?"],
    }


@pytest.mark.parametrize("criteria", [None, [], [" "]])
def test_missing_success_criteria_are_an_issue_and_a_question(criteria):
    assert report(success_criteria=criteria) == {
        "valid": False,
        "issues": ["Success criteria not defined"],
        "questions": ["How will we know when this is complete?"],
    }


def test_a_vague_term_is_an_issue_with_a_question_naming_it():
    assert report(prompt=GOOD_PROMPT + " in a simple way") == {
        "valid": False,
        "issues": ["Vague requirement: 'simple'"],
        "questions": ["Please clarify what 'simple' means in this context"],
    }


@pytest.mark.parametrize("term", ["quickly", "just", "simple", "easy", "whatever", "somehow"])
def test_every_vague_term_is_caught(term):
    assert issues(prompt=f"{GOOD_PROMPT} {term}") == [f"Vague requirement: '{term}'"]


@pytest.mark.parametrize(
    "prompt",
    [
        "justify every decision in the design document",
        "adjust the simpler and simplest parts, simply and easily, justly",
        "the easygoing team somehows whatevers",
        "just_in_time compilation",
    ],
)
def test_vague_terms_inside_longer_words_do_not_count(prompt):
    assert vague_terms(words_of(prompt)) == []


def test_vague_terms_match_case_insensitively_at_a_sentence_start_and_next_to_punctuation():
    assert vague_terms(words_of("Just do it. SIMPLE! (easy), whatever; Quickly?")) == [
        "quickly",
        "just",
        "simple",
        "easy",
        "whatever",
    ]


def test_a_hyphenated_vague_term_still_counts():
    assert vague_terms(words_of("an easy-to-use interface")) == ["easy"]


def test_each_distinct_vague_term_is_reported_once_in_table_order():
    prompt = GOOD_PROMPT + " and somehow just make it easy, just easy"
    assert report(prompt=prompt) == {
        "valid": False,
        "issues": [
            "Vague requirement: 'just'",
            "Vague requirement: 'easy'",
            "Vague requirement: 'somehow'",
        ],
        "questions": [
            "Please clarify what 'just' means in this context",
            "Please clarify what 'easy' means in this context",
            "Please clarify what 'somehow' means in this context",
        ],
    }


def test_justify_does_not_trip_the_vague_term_check():
    assert report(prompt=GOOD_PROMPT + " and justify the schema")["valid"] is True


def test_a_prompt_of_fewer_than_ten_words_is_too_brief():
    # Nine words that still show every detail category.
    prompt = "Build it using Python because we must only ship"
    assert report(prompt=prompt) == {
        "valid": False,
        "issues": ["Requirement too brief (9 words)"],
        "questions": ["Please provide more details about what needs to be built"],
    }


def test_a_prompt_of_exactly_ten_words_is_not_too_brief():
    prompt = "Build it using Python because we must only ship today"
    assert report(prompt=prompt)["valid"] is True


def test_three_missing_detail_categories_lack_detail_with_the_four_fixed_questions():
    # What (create) and how (with) are there; why, constraints and scope are not.
    prompt = "Create a dashboard page with charts of monthly revenue per region and product line"
    assert report(prompt=prompt) == {
        "valid": False,
        "issues": ["Prompt lacks detail in: why, constraints, scope"],
        "questions": list(LACKS_DETAIL_QUESTIONS),
    }


def test_two_missing_detail_categories_are_tolerated():
    # What, how and why are there; constraints and scope are not.
    prompt = "Create a dashboard page with charts because managers review monthly revenue trends"
    assert missing_detail(words_of(prompt)) == ["constraints", "scope"]
    assert report(prompt=prompt)["valid"] is True


def test_detail_indicators_match_whole_words_only():
    # "tomato" is not "to", "bypass" not "by", "allocate" not "all", "format" not "for".
    words = words_of("tomato bypass allocate format withdrawn addendum mustard")
    assert missing_detail(words) == ["what", "why", "how", "constraints", "scope"]


def test_detail_indicators_include_common_inflections():
    words = words_of("builds requirements includes needs uses")
    assert missing_detail(words) == []


def test_the_four_detail_questions_are_the_older_designs():
    assert LACKS_DETAIL_QUESTIONS == (
        "What specifically needs to be built? (what)",
        "Why is this needed? (purpose)",
        "How should it be implemented? (approach)",
        "Are there any constraints or requirements? (constraints)",
    )


def test_a_plan_failing_every_rule_reports_everything_in_rule_order():
    bare = parse_plan({"id": "p", "prompt": "Make it simple"})
    assert validate_plan(bare).to_wire() == {
        "valid": False,
        "issues": [
            "Tech stack not specified",
            "Success criteria not defined",
            "Vague requirement: 'simple'",
            "Requirement too brief (3 words)",
            "Prompt lacks detail in: what, why, how, constraints, scope",
        ],
        "questions": [
            "What tech stack / technologies should be used?",
            "Where will this be deployed?",
            "How will we know when this is complete?",
            "Please clarify what 'simple' means in this context",
            "Please provide more details about what needs to be built",
            *LACKS_DETAIL_QUESTIONS,
        ],
    }


def test_a_missing_prompt_skips_the_wording_checks():
    bare = parse_plan({"id": "p"})
    assert validate_plan(bare).to_wire() == {
        "valid": False,
        "issues": [
            "Missing prompt/requirements",
            "Tech stack not specified",
            "Success criteria not defined",
        ],
        "questions": [
            "What is the goal of this work?",
            "What tech stack / technologies should be used?",
            "Where will this be deployed?",
            "How will we know when this is complete?",
        ],
    }


def test_the_bypass_flag_skips_vague_brief_and_detail_checks():
    bypass = {"challenge_vague_requirements": False}
    assert report(prompt="Make it simple", options=bypass) == {
        "valid": True,
        "issues": [],
        "questions": [],
    }


def test_the_bypass_flag_never_skips_the_required_fields():
    bypass = {"challenge_vague_requirements": False}
    assert report(prompt=None, tech_stack=None, success_criteria=None, options=bypass) == {
        "valid": False,
        "issues": [
            "Missing prompt/requirements",
            "Tech stack not specified",
            "Success criteria not defined",
        ],
        "questions": [
            "What is the goal of this work?",
            "What tech stack / technologies should be used?",
            "How will we know when this is complete?",
        ],
    }


def test_the_bypass_flag_still_asks_about_deployment():
    bypass = {"challenge_vague_requirements": False}
    assert report(deployment=None, options=bypass)["questions"] == ["Where will this be deployed?"]


def test_the_checks_are_on_by_default_and_when_the_flag_is_true():
    assert issues(prompt="Make it simple", options={"challenge_vague_requirements": True})
    assert issues(prompt="Make it simple", options={})
    assert issues(prompt="Make it simple")


def test_validation_is_deterministic():
    bare = parse_plan({"id": "p", "prompt": "just somehow make it quickly easy whatever simple"})
    assert len({validate_plan(bare) for _ in range(20)}) == 1
