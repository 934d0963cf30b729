"""The search-and-cite env: the model searches a corpus with tools and answers with a citation.

    env = SearchEnv(SearchConfig())                  # seeded fictional corpus (corpus.py)
    task = env.tasks("test", 1)[0]
    env.reset(task)                                  # system prompt with the tools, question
    env.step(task, ToolCall("search", {"query": "Velmora Systems"}), {})   # "[doc 12] ..."
    env.score(task, transcript).reward              # answer F1/EM + citation + format

Tools: `search(query)` gives the top_k documents (id, title, snippet); `open(doc_id)` the full
text. The final answer is one line `Answer: <answer> [doc <id>]`. Reward = reward_answer x (token
F1 or exact match) + reward_citation x (cites the document holding the answer) + reward_format x
(an `Answer:` line with a citation). An episode is `correct` when the answer matches exactly and
cites that document. `report` writes the answer with its sources; `demonstration` is a scripted
episode (search, then answer with the citation) for a supervised warm-up.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Literal

from pydantic import Field

from ownlm.config import Config
from ownlm.envs.base import EpisodeScore, Message, Task
from ownlm.envs.search.corpus import build_synthetic, load_documents, load_questions
from ownlm.envs.search.index import SearchIndex
from ownlm.envs.tools import ToolCall, ToolCallError, function_tool, render_tool_call, render_tools
from ownlm.errors import ConfigError
from ownlm.models.chat import THINK_OFF_PREFIX, split_thinking

SYSTEM_PROMPT = (
    "Answer questions by searching documents.\n{tools}\nThen reply: Answer: <answer> [doc <id>]"
)
# few-shot examples take the kinds in this order (two-hop first); other kinds follow
_SHOT_ORDER = [
    "founder_bcity",
    "hq",
    "founder_byear",
    "product",
    "byear",
    "founder",
    "year",
    "bcity",
]
_CITATION = re.compile(r"\[doc\s*(\d+)\]", re.IGNORECASE)
_ANSWER = re.compile(r"answer\s*:\s*(.*)", re.IGNORECASE)
_ARTICLES = re.compile(r"\b(a|an|the)\b")

TOOLS = [
    function_tool(
        "search",
        "find documents",
        {"query": ("string", "words to look for")},
        ["query"],
    ),
    function_tool("open", "read a document", {"doc_id": ("integer", "a document id")}, ["doc_id"]),
]


class SearchConfig(Config):
    """Corpus, tools and reward weights of the search env."""

    kind: Literal["search"] = "search"
    seed: int = Field(0, description="seed of the synthetic corpus")
    n_companies: int = Field(
        default=300, ge=2, description="synthetic corpus: two documents and 8 questions each"
    )
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    docs_path: str | None = Field(
        None, description="your documents (JSONL or a folder of .txt); see corpus.py"
    )
    questions_path: str | None = Field(
        None, description="your questions (JSONL with a split field)"
    )
    train_kinds: list[str] | None = Field(
        None,
        description="train only on these question kinds (e.g. [founder_bcity, founder_byear], "
        "the two-hop ones); null: all. The test split is never filtered",
    )
    train_kind_weights: dict[str, int] | None = Field(
        None,
        description="copies of each train question of a kind in the pool (others: 1), e.g. "
        "{founder_bcity: 3} to oversample it for GRPO",
    )
    few_shot: int = Field(
        default=0,
        ge=0,
        description="scripted worked episodes before each question: a prompting-only baseline; "
        "0 for training",
    )
    retrieval: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25", description="how search ranks: bm25 (words), dense (MiniLM embeddings) or both"
    )
    top_k: int = Field(default=3, ge=1, description="documents a search returns")
    snippet_chars: int = Field(default=200, ge=20)
    max_turns: int = Field(default=4, ge=1, description="model turns per episode")
    answer_metric: Literal["f1", "em"] = "f1"
    reward_answer: float = 1.0
    reward_citation: float = 0.5
    reward_format: float = 0.1
    system_prompt: str = Field(SYSTEM_PROMPT, description="`{tools}` is replaced by the tool list")


class SearchEnv:
    """MultiTurnEnv over a document collection (see the module docstring)."""

    def __init__(self, cfg: SearchConfig | None = None) -> None:
        self.cfg = cfg or SearchConfig()
        self.name = "search"
        self.tools = TOOLS
        self.max_turns = self.cfg.max_turns
        if (self.cfg.docs_path is None) != (self.cfg.questions_path is None):
            raise ConfigError(
                "search env: set both docs_path and questions_path (your own corpus) or neither "
                "(the synthetic one)"
            )
        if self.cfg.docs_path is not None and self.cfg.questions_path is not None:
            docs = load_documents(self.cfg.docs_path)
            self._splits = load_questions(self.cfg.questions_path)
        else:
            docs, self._splits = build_synthetic(
                self.cfg.seed, self.cfg.n_companies, self.cfg.test_fraction
            )
        self.index = SearchIndex(docs, self.cfg.retrieval)
        self._check_kinds()
        self._shots = self._examples(self.cfg.few_shot)

    def _check_kinds(self) -> None:
        """Refuse kind names the train split does not have, naming the ones it has."""
        known = {t.metadata.get("kind") for t in self._splits.get("train", [])}
        named = set(self.cfg.train_kinds or []) | set(self.cfg.train_kind_weights or {})
        unknown = sorted(str(k) for k in named - known)
        if unknown:
            raise ConfigError(
                f"search env: no train questions of kind {', '.join(unknown)}; the kinds are "
                f"{', '.join(sorted(str(k) for k in known))}"
            )
        if any(w < 0 for w in (self.cfg.train_kind_weights or {}).values()):
            raise ConfigError("search env: train_kind_weights must be 0 or more")

    def tasks(self, split: str, n: int) -> list[Task]:
        """The first n questions of a split (train questions are shuffled by the recipe)."""
        pool = self._pool(split)
        if n > len(pool):
            raise ConfigError(
                f"asked for {n} {split} questions but the search env has {len(pool)}; ask for "
                f"fewer or raise n_companies (8 questions each)"
            )
        return pool[:n]

    def pool_size(self, split: str) -> int:
        """How many questions a split holds."""
        return len(self._pool(split))

    def _pool(self, split: str) -> list[Task]:
        if split not in self._splits:
            raise ConfigError(f"unknown split '{split}'; use 'train' or 'test'")
        pool = self._splits[split]
        if split == "train" and self.cfg.train_kinds is not None:
            pool = [t for t in pool if t.metadata.get("kind") in self.cfg.train_kinds]
        if split == "train" and self.cfg.train_kind_weights:
            weights = self.cfg.train_kind_weights
            pool = [t for t in pool for _ in range(weights.get(str(t.metadata.get("kind")), 1))]
        return pool

    def reset(self, task: Task) -> list[Message]:
        """System prompt with the tools and answer format, the worked examples, the question."""
        system = self.cfg.system_prompt.replace("{tools}", render_tools(self.tools))
        return [
            {"role": "system", "content": system},
            *self._shots,
            {"role": "user", "content": task.question},
        ]

    def _examples(self, k: int) -> list[Message]:
        """k scripted episodes (without the system prompt) of train questions, kinds in turn."""
        by_kind: dict[str, list[Task]] = {}
        for t in self._splits.get("train", []):
            by_kind.setdefault(str(t.metadata.get("kind")), []).append(t)
        order = [kind for kind in _SHOT_ORDER if kind in by_kind]
        order += [kind for kind in by_kind if kind not in _SHOT_ORDER]
        messages: list[Message] = []
        for i in range(k):
            kind = order[i % len(order)]
            task = by_kind[kind][(i // len(order)) % len(by_kind[kind])]
            messages += self._scripted(task)
        return messages

    def step(self, task: Task, call: ToolCall, state: dict[str, Any]) -> str:
        """Run `search` or `open`; an unknown document id raises ToolCallError."""
        if call.name == "search":
            hits = self.index.search(str(call.arguments["query"]), self.cfg.top_k)
            if not hits:
                return "No documents found; try other words."
            return "\n".join(
                f"[doc {d.id}] {d.title}: {d.text[: self.cfg.snippet_chars]}" for d in hits
            )
        if call.name == "open":
            doc = self.index.by_id.get(int(call.arguments["doc_id"]))
            if doc is None:
                raise ToolCallError(f"open: no document {call.arguments['doc_id']}")
            return f"[doc {doc.id}] {doc.title}\n{doc.text}"
        raise ToolCallError(f"unknown tool '{call.name}'")

    def score(self, task: Task, transcript: list[Message]) -> EpisodeScore:
        """Reward of an episode from its last assistant message (see module docstring)."""
        final = final_answer(transcript)
        answer, cited = parse_answer(final)
        gold_doc = task.metadata.get("doc_id")
        has_line = _ANSWER.search(final) is not None and bool(cited)
        em = answer is not None and normalize(answer) == normalize(task.answer)
        f1 = token_f1(answer, task.answer) if answer is not None else 0.0
        cites = gold_doc is not None and int(gold_doc) in cited
        reward = (
            self.cfg.reward_answer * (f1 if self.cfg.answer_metric == "f1" else float(em))
            + self.cfg.reward_citation * cites
            + self.cfg.reward_format * has_line
        )
        return EpisodeScore(
            reward=reward,
            correct=em and cites,
            well_formed=has_line,
            extracted=answer,
            answer_correct=em,
            cited=cites,
        )

    def report(self, transcript: list[Message]) -> str:
        """The answer with its sources: `<answer> [doc 12]` then one line per cited document."""
        answer, cited = parse_answer(final_answer(transcript))
        lines = [f"{answer or '(no answer)'} " + " ".join(f"[doc {i}]" for i in cited)]
        sources = [self.index.by_id[i] for i in cited if i in self.index.by_id]
        if sources:
            lines += ["", "Sources:"] + [f"[doc {d.id}] {d.title}: {d.text}" for d in sources]
        return "\n".join(lines).strip()

    def demonstration(self, task: Task) -> list[Message]:
        """A scripted episode: search each of the task's queries, then answer with the citation.

        Assistant turns open with the empty thought the rollout's prompt ends with, so a model
        trained on these sees what it will see when sampled (thinking off).
        """
        return self.reset(task)[:-1] + self._scripted(task)

    def _scripted(self, task: Task) -> list[Message]:
        """The question, a search for each of its queries, the answer with its citation."""
        messages: list[Message] = [{"role": "user", "content": task.question}]
        state: dict[str, Any] = {}
        for query in task.metadata.get("queries", []):
            call = ToolCall("search", {"query": query})
            content = THINK_OFF_PREFIX + render_tool_call(call)
            messages.append({"role": "assistant", "content": content})
            messages.append({"role": "tool", "content": self.step(task, call, state)})
        answer = f"Answer: {task.answer} [doc {task.metadata['doc_id']}]"
        messages.append({"role": "assistant", "content": THINK_OFF_PREFIX + answer})
        return messages


def final_answer(transcript: list[Message]) -> str:
    """The last assistant message without its thought; "" when it is a tool call or missing."""
    for msg in reversed(transcript):
        if msg.get("role") == "assistant":
            text = split_thinking(str(msg.get("content", "")))[1]
            return "" if "<tool_call>" in text else text
    return ""


def parse_answer(text: str) -> tuple[str | None, list[int]]:
    """(answer without citations, cited doc ids) of a final message; answer None when empty."""
    cited = [int(x) for x in _CITATION.findall(text)]
    m = _ANSWER.search(text)
    body = m.group(1) if m else text
    first = body.strip().splitlines()[0] if body.strip() else ""
    body = _CITATION.sub("", first).strip().rstrip(".").strip()
    return (body or None), list(dict.fromkeys(cited))


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 of two answers after `normalize`."""
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
