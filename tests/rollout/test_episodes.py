"""Multi-turn rollout: tool results go back to the model with no gradient, malformed calls and the
turn limit end cleanly, and the training forward recomputes the sampler's logprobs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ownlm.envs.base import EpisodeScore, Message, Task
from ownlm.envs.tools import TOOL_CALL_CLOSE, ToolCall, function_tool
from ownlm.models.chat import encode_prompt
from ownlm.models.tiny import tiny_model
from ownlm.rollout import episodes as episodes_module
from ownlm.rollout.episodes import run_episodes
from ownlm.rollout.types import Completions, SamplingParams
from ownlm.train.losses import grpo_loss
from ownlm.train.policy_logprobs import completion_logprobs

CALL = '<tool_call>{"name": "lookup", "arguments": {"key": "x"}}</tool_call>'


class LookupEnv:
    """Toy multi-turn env: `lookup(key)` returns `value-of-<key>`; any answer scores 1."""

    name = "lookup"
    tools = [function_tool("lookup", "look a key up", {"key": ("string", "a key")}, ["key"])]

    def __init__(self, max_turns: int = 3) -> None:
        self.max_turns = max_turns
        self.calls: list[ToolCall] = []

    def tasks(self, split: str, n: int) -> list[Task]:
        return [Task(id=f"{split}-{i}", question=f"question {i}", answer="v") for i in range(n)]

    def reset(self, task: Task) -> list[Message]:
        return [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": task.question},
        ]

    def step(self, task: Task, call: ToolCall, state: dict[str, Any]) -> str:
        self.calls.append(call)
        state["n"] = state.get("n", 0) + 1
        return f"value-of-{call.arguments['key']} (call {state['n']})"

    def score(self, task: Task, transcript: list[Message]) -> EpisodeScore:
        return EpisodeScore(reward=1.0, correct=True, well_formed=True)


class ForcedAt(type(tiny_model(seed=0)[0])):  # type: ignore[misc]
    """The tiny model, except that the token at position p is (almost) surely script[p]."""

    script: dict[int, int] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = super().forward(*args, **kwargs)
        positions = kwargs.get("position_ids")
        if positions is None:  # a forward from the first token
            positions = torch.arange(kwargs["input_ids"].shape[1])[None, :]
        positions = positions[:, -out.logits.shape[1] :]
        for pos, token in self.script.items():  # logits at p - 1 choose the token at p
            out.logits[..., token] += torch.where(positions + 1 == pos, 100.0, 0.0)
        return out


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return tiny_model(seed=0)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def scripted_sampler(model: Any, turns: dict[str, list[str]]) -> Any:
    """A stand-in for sample_completions: the next turn comes from a script (keyed by question,
    indexed by the tool results already in the prompt); logprobs from a plain full forward."""

    def sample(
        _m: Any, tokenizer: Any, prompt_ids: list[list[int]], n: int, params: Any, **_kv: Any
    ) -> Any:
        assert TOOL_CALL_CLOSE in params.stop
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        rows, logps, texts, reasons = [], [], [], []
        for ids in [ids for ids in prompt_ids for _ in range(n)]:
            prompt = tokenizer.decode(ids)
            question = next(q for q in turns if q in prompt)
            text = turns[question][prompt.count("<|im_start|>tool")]
            toks = tokenizer.encode(text, add_special_tokens=False)
            if TOOL_CALL_CLOSE not in text:
                toks.append(im_end)  # an answer ends with end-of-turn
            toks = toks[: params.max_new_tokens]
            with torch.no_grad():
                full = torch.tensor([ids + toks])
                logits = model(input_ids=full).logits[0, len(ids) - 1 : -1].float()
                lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(toks)[:, None])[:, 0]
            rows.append(toks)
            logps.append(lp)
            texts.append(text.replace(TOOL_CALL_CLOSE, ""))
            reasons.append("stop" if len(toks) < params.max_new_tokens else "length")
        width = max(len(r) for r in rows)
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        logprobs = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (r, lp) in enumerate(zip(rows, logps, strict=True)):
            tokens[i, : len(r)], logprobs[i, : len(r)], mask[i, : len(r)] = (
                torch.tensor(r), lp, True
            )  # fmt: skip
        return Completions(prompt_ids, n, tokens, logprobs, mask, texts, reasons)

    return sample


def test_tool_results_are_masked_and_logprobs_match_the_training_forward(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny
    script = {
        "question 0": [CALL, CALL, "Answer: v"],
        "question 1": ['<tool_call>{"name": "lookup", "arguments": {"key": ' + "}</tool_call>",
                       "Answer: w"],
    }  # fmt: skip
    monkeypatch.setattr(episodes_module, "sample_completions", scripted_sampler(model, script))
    env = LookupEnv()
    out = run_episodes(
        model, tok, env, env.tasks("train", 2), 1, SamplingParams(), max_episode_tokens=400
    )
    a, b = out.episodes
    assert (a.turns, a.tool_calls, a.malformed, a.finish_reason) == (3, 2, 0, "answer")
    assert a.transcript[1] == {"role": "tool", "content": "value-of-x (call 1)"}
    assert a.transcript[3]["content"] == "value-of-x (call 2)"  # state kept per episode
    # the malformed call goes back to the model as an error, and the episode continues
    assert (b.turns, b.tool_calls, b.malformed, b.finish_reason) == (2, 1, 1, "answer")
    assert b.transcript[1]["content"].startswith("Error: the tool call is not valid JSON")
    assert b.answer == "Answer: w"

    comps = out.completions
    row = comps.tokens[0][: int(comps.completion_mask[0].nonzero()[-1]) + 1]
    text = tok.decode(row)
    masked_text = tok.decode(row[~comps.completion_mask[0, : len(row)]])
    # everything ownlm inserted (end of turn, tool message, next header) is masked
    assert "value-of-x (call 1)" in masked_text and "value-of-x (call 2)" in masked_text
    assert "<|im_start|>tool\nvalue-of-x (call 1)<|im_end|>\n<|im_start|>assistant\n" in text
    sampled_text = tok.decode(row[comps.completion_mask[0, : len(row)]])
    assert "value-of" not in sampled_text and sampled_text.count(TOOL_CALL_CLOSE) == 2

    recomputed = completion_logprobs(
        model, comps.prompt_ids, comps.tokens, comps.completion_mask, 1, pad_id=tok.pad_token_id
    )
    m = comps.completion_mask
    assert torch.allclose(recomputed[m], comps.logprobs[m], atol=1e-4)
    assert recomputed[~m].abs().sum() == 0


def test_tool_tokens_get_no_gradient(
    tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny
    monkeypatch.setattr(
        episodes_module,
        "sample_completions",
        scripted_sampler(model, {"question 0": [CALL, "Answer: v"]}),
    )
    env = LookupEnv()
    comps = run_episodes(
        model, tok, env, env.tasks("train", 1), 1, SamplingParams(), max_episode_tokens=400
    ).completions
    mask = comps.completion_mask
    logp = torch.randn(mask.shape, requires_grad=True)
    old = logp.detach().clone()
    loss = grpo_loss(logp, old, torch.tensor([1.0]), mask, variant="grpo",
                     clip_eps_low=0.2, clip_eps_high=0.2, max_tokens=64)  # fmt: skip
    loss.backward()
    assert logp.grad is not None
    tool_positions = ~mask[0, : int(mask[0].nonzero()[-1])]
    assert tool_positions.sum() > 10  # the tool message really is in the row
    assert logp.grad[0, : len(tool_positions)][tool_positions].abs().sum() == 0
    assert logp.grad[mask].abs().sum() > 0
    # changing what the loss sees at tool positions leaves it unchanged
    shifted = logp.detach() + (~mask).float() * 5.0
    again = grpo_loss(
        shifted, old + (~mask).float() * 3.0, torch.tensor([1.0]), mask,
        variant="grpo", clip_eps_low=0.2, clip_eps_high=0.2, max_tokens=64,
    )  # fmt: skip
    assert torch.allclose(again, loss.detach())


def test_turn_limit_ends_cleanly(tiny: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny
    monkeypatch.setattr(
        episodes_module, "sample_completions", scripted_sampler(model, {"question": [CALL] * 5})
    )
    env = LookupEnv(max_turns=2)
    out = run_episodes(
        model, tok, env, env.tasks("train", 2), 2, SamplingParams(), max_episode_tokens=1000
    )
    assert [e.finish_reason for e in out.episodes] == ["max_turns"] * 4
    assert [e.turns for e in out.episodes] == [2] * 4
    assert out.stats()["rollout/tool_use_rate"] == 1.0
    assert out.stats()["rollout/turns_mean"] == 2.0
    assert out.completions.finish_reasons == ["length"] * 4
    # the token limit also ends an episode: this one cannot fit the second call
    short = run_episodes(
        model, tok, env, env.tasks("train", 1), 1, SamplingParams(), max_episode_tokens=60
    )
    assert short.episodes[0].finish_reason == "max_tokens"
    assert short.completions.tokens.shape[1] <= 60


def test_real_sampler_episodes_match_the_training_forward(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    env = LookupEnv()
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    out = run_episodes(model, tok, env, env.tasks("train", 2), 3, params, max_episode_tokens=64)
    comps = out.completions
    assert comps.tokens.shape[0] == 6
    assert {e.finish_reason for e in out.episodes} <= {"answer", "max_tokens"}
    recomputed = completion_logprobs(
        model, comps.prompt_ids, comps.tokens, comps.completion_mask, 3, pad_id=tok.pad_token_id
    )
    m = comps.completion_mask
    assert m.sum() > 0
    assert torch.allclose(recomputed[m], comps.logprobs[m], atol=1e-4)


def test_kept_caches_between_rounds_change_nothing(tiny: tuple[Any, Any]) -> None:
    """Turn 1 is forced to be a call (a random model never writes one), turn 2 is sampled after
    the tool result: with kv_reuse (the prompt read once per group, each row's cache kept across
    the tool result) the episodes are the ones a full re-prefill samples, and their logprobs are
    the training forward's."""
    model, tok = tiny
    env = LookupEnv()
    tasks = env.tasks("train", 2)
    prompt_len = len(encode_prompt(tok, env.reset(tasks[0])))
    assert prompt_len == len(encode_prompt(tok, env.reset(tasks[1])))
    forced = copy.deepcopy(model)
    forced.__class__ = ForcedAt
    forced.script = dict(enumerate(tok.encode(CALL, add_special_tokens=False), start=prompt_len))
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=3)
    runs = {
        reuse: run_episodes(
            forced, tok, env, tasks, 3, params, max_episode_tokens=160, kv_reuse=reuse
        )
        for reuse in (True, False)
    }
    for reuse, out in runs.items():
        assert all(e.tool_calls == 1 and e.turns == 2 for e in out.episodes), reuse
    a, b = runs[True].completions, runs[False].completions
    assert torch.equal(a.tokens, b.tokens)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
    # the second turn (after the call and the tool result) is the plain model's own sampling
    recomputed = completion_logprobs(
        model, a.prompt_ids, a.tokens, a.completion_mask, 3, pad_id=tok.pad_token_id
    )
    m = a.completion_mask.clone()
    m[:, : len(forced.script)] = False
    assert m.sum() > 0
    assert torch.allclose(recomputed[m], a.logprobs[m], atol=1e-4)
