"""Search env: corpus splits share no entity, search finds the right doc, rewards by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownlm.envs.base import Task, is_multi_turn
from ownlm.envs.search.corpus import Document, load_documents, load_questions
from ownlm.envs.search.env import SearchConfig, SearchEnv, parse_answer, token_f1
from ownlm.envs.search.index import SearchIndex
from ownlm.envs.tools import ToolCall, ToolCallError
from ownlm.errors import ConfigError, DataError
from ownlm.eval.accuracy import EvalConfig, run_eval
from ownlm.models.tiny import tiny_model


@pytest.fixture(scope="module")
def env() -> SearchEnv:
    return SearchEnv(SearchConfig(n_companies=20, test_fraction=0.25))


def test_splits_share_no_entity_and_the_corpus_is_seeded(env: SearchEnv) -> None:
    train, test = env.tasks("train", env.pool_size("train")), env.tasks("test", 40)
    assert (len(train), len(test)) == (15 * 8, 5 * 8)
    entities = {s: {q for t in ts for q in t.metadata["queries"]} for s, ts in
                [("train", train), ("test", test)]}  # fmt: skip
    assert not entities["train"] & entities["test"]
    again = SearchEnv(SearchConfig(n_companies=20, test_fraction=0.25))
    assert again.tasks("test", 40) == test
    assert is_multi_turn(env)


def test_search_returns_the_right_doc_for_an_exact_query(env: SearchEnv) -> None:
    for task in env.tasks("test", 40):
        if task.metadata["kind"] in ("year", "byear"):
            top = env.index.search(task.metadata["queries"][0], 1)[0]
            assert top.id == task.metadata["doc_id"]
            assert task.answer in top.text


def test_index_on_a_hand_made_corpus() -> None:
    index = SearchIndex([Document(3, "Apples", "red fruit"), Document(9, "Cars", "fast wheels")])
    assert [d.id for d in index.search("wheels", 2)] == [9]
    assert index.search("zebra", 2) == []


def test_tools_and_errors(env: SearchEnv) -> None:
    task = env.tasks("test", 1)[0]
    doc = env.index.docs[0]
    opened = env.step(task, ToolCall("open", {"doc_id": doc.id}), {})
    assert opened == f"[doc {doc.id}] {doc.title}\n{doc.text}"
    hits = env.step(task, ToolCall("search", {"query": doc.title}), {})
    assert hits.splitlines()[0].startswith(f"[doc {doc.id}] {doc.title}: ")
    assert len(hits.splitlines()) == 2  # top_k
    with pytest.raises(ToolCallError, match="no document 99999"):
        env.step(task, ToolCall("open", {"doc_id": 99999}), {})


def test_f1_and_answer_parsing_by_hand() -> None:
    assert token_f1("New Tristanmouth", "new tristanmouth.") == 1.0
    # pred {new, york}, gold {new}: precision 1/2, recall 1 -> F1 2/3
    assert token_f1("New York", "New") == pytest.approx(2 / 3)
    assert token_f1("Paris", "Rome") == 0.0
    assert parse_answer("Answer: 1987 [doc 12] [doc 4]") == ("1987", [12, 4])
    assert parse_answer("It is 1987.") == ("It is 1987", [])


@pytest.mark.parametrize(
    ("final", "reward", "correct", "answer_correct", "cited", "well_formed"),
    [
        ("Answer: 1987 [doc 12]", 1.0 + 0.5 + 0.1, True, True, True, True),
        ("Answer: 1987 [doc 3]", 1.0 + 0.0 + 0.1, False, True, False, True),
        ("1987 [doc 12]", 1.0 + 0.5 + 0.0, True, True, True, False),  # no `Answer:` line
        # tokens {in, 1987} vs {1987}: precision 1/2, recall 1, F1 2/3
        ("Answer: in 1987 [doc 12]", 2 / 3 + 0.5 + 0.1, False, False, True, True),
        ("Answer: 1990", 0.0, False, False, False, False),
    ],
)
def test_reward_cases_by_hand(
    final: str, reward: float, correct: bool, answer_correct: bool, cited: bool, well_formed: bool
) -> None:
    env = SearchEnv.__new__(SearchEnv)
    env.cfg = SearchConfig()
    task = Task(id="t", question="When?", answer="1987", metadata={"doc_id": 12})
    s = env.score(task, [{"role": "assistant", "content": final}])
    assert s.reward == pytest.approx(reward)
    assert (s.correct, s.answer_correct, s.cited, s.well_formed) == (
        correct, answer_correct, cited, well_formed
    )  # fmt: skip


def test_em_metric_and_a_tool_call_as_last_message() -> None:
    env = SearchEnv.__new__(SearchEnv)
    env.cfg = SearchConfig(answer_metric="em")
    task = Task(id="t", question="Where?", answer="New York", metadata={"doc_id": 1})
    assert env.score(task, [{"role": "assistant", "content": "Answer: New [doc 1]"}]).reward == (
        pytest.approx(0.6)
    )
    unfinished = [{"role": "assistant", "content": '<tool_call>{"name": "search"}</tool_call>'}]
    assert env.score(task, unfinished).reward == 0.0


def test_demonstration_scores_full_and_report_cites(env: SearchEnv) -> None:
    for task in env.tasks("test", 8):  # all eight kinds of one company, two-hop ones included
        messages = env.demonstration(task)
        transcript = messages[2:]
        assert env.score(task, transcript).correct, task
    report = env.report(transcript)
    assert report.startswith(f"{task.answer} [doc {task.metadata['doc_id']}]")
    assert "Sources:" in report


def test_user_documents_and_questions(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "Zorblat.txt").write_text("Zorblat is a moon of Quux with 3 lakes.")
    (docs / "Quux.md").write_text("Quux is a gas planet.")
    questions = tmp_path / "q.jsonl"
    rows = [
        {"question": "How many lakes has Zorblat?", "answer": "3", "doc_id": 1, "split": "test"},
        {"question": "What is Quux?", "answer": "a gas planet", "doc_id": 0, "split": "train"},
    ]
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    env = SearchEnv(SearchConfig(docs_path=str(docs), questions_path=str(questions)))
    assert [d.title for d in load_documents(docs)] == ["Quux", "Zorblat"]
    task = env.tasks("test", 1)[0]
    assert env.step(task, ToolCall("search", {"query": "lakes"}), {}).startswith("[doc 1] Zorblat")
    assert load_questions(questions)["train"][0].answer == "a gas planet"
    with pytest.raises(ConfigError, match="both docs_path and questions_path"):
        SearchEnv(SearchConfig(docs_path=str(docs)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(DataError, match='line 1: a document needs a string "text"'):
        load_documents(bad)


def test_eval_reports_multi_turn_figures(tmp_path: Path) -> None:
    model, tok = tiny_model(seed=0)
    cfg = EvalConfig(
        env=SearchConfig(n_companies=4, test_fraction=0.5), n_problems=3, max_new_tokens=6,
        max_episode_tokens=24, out_path=str(tmp_path / "rows.jsonl"),
    )  # fmt: skip
    report = run_eval(cfg, model=model, tokenizer=tok)
    assert report.n == 3 and report.env == "search"
    assert report.tool_use_rate == 0.0  # a random model writes no call
    assert report.answer_accuracy == 0.0 and report.citation_accuracy == 0.0
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert rows[0]["transcript"][0]["role"] == "assistant"
    assert {r["finish_reason"] for r in rows} <= {"answer", "max_tokens"}


def test_train_kinds_filter_only_the_train_split() -> None:
    env = SearchEnv(SearchConfig(n_companies=20, test_fraction=0.25, train_kinds=["year"]))
    assert env.pool_size("train") == 15
    assert {t.metadata["kind"] for t in env.tasks("train", 15)} == {"year"}
    assert env.pool_size("test") == 40


def test_kind_weights_repeat_train_questions_and_unknown_kinds_are_named() -> None:
    cfg = SearchConfig(n_companies=20, test_fraction=0.25)
    weighted = SearchEnv(cfg.model_copy(update={"train_kind_weights": {"founder_bcity": 3}}))
    pool = weighted.tasks("train", weighted.pool_size("train"))
    assert len(pool) == 15 * 8 + 2 * 15  # each founder_bcity question three times
    assert sum(t.metadata["kind"] == "founder_bcity" for t in pool) == 45
    assert weighted.pool_size("test") == 5 * 8  # the test split is never weighted
    dropped = SearchEnv(cfg.model_copy(update={"train_kind_weights": {"hq": 0}}))
    assert dropped.pool_size("train") == 15 * 7
    with pytest.raises(ConfigError, match="no train questions of kind hqq; the kinds are"):
        SearchEnv(cfg.model_copy(update={"train_kind_weights": {"hqq": 2}}))
    with pytest.raises(ConfigError, match="0 or more"):
        SearchEnv(cfg.model_copy(update={"train_kind_weights": {"hq": -1}}))


def test_few_shot_puts_scripted_train_episodes_before_the_question() -> None:
    env = SearchEnv(SearchConfig(n_companies=20, test_fraction=0.25, few_shot=3))
    task = env.tasks("test", 1)[0]
    messages = env.reset(task)
    assert messages[0]["role"] == "system" and messages[-1] == {
        "role": "user",
        "content": task.question,
    }
    shots = messages[1:-1]
    users = [m["content"] for m in shots if m["role"] == "user"]
    assert len(users) == 3 and "the founder of" in users[0]  # two-hop first
    assert sum(m["role"] == "tool" for m in shots) == 2 + 1 + 2  # two-hop, hq, two-hop
    train_questions = {t.question for t in env.tasks("train", env.pool_size("train"))}
    assert set(users) <= train_questions
    # every prompt starts with the same tokens up to the question: kept caches read them once
    other = env.reset(env.tasks("test", 2)[1])
    assert other[:-1] == messages[:-1]
