"""A user-defined tool and verifier: a `calculator` tool env (README, "Train a tool-using agent").

from examples.calculator_env import CalculatorEnv
train_grpo(GRPOConfig(model="runs/calc_sft/final", max_episode_tokens=256), env=CalculatorEnv())
"""

from __future__ import annotations

import ast
import operator
import random
from typing import Any

from ownlm.envs.base import EpisodeScore, Message, Task
from ownlm.envs.search.env import final_answer, parse_answer
from ownlm.envs.tools import ToolCall, ToolCallError, function_tool, render_tools

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def calculate(expression: str) -> int:
    """+, - and * of integers; anything else is an error the model sees."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.left), value(node.right))
        raise ToolCallError(f"calculator: cannot compute {expression!r}; use integers, + - *")

    try:
        return value(ast.parse(expression, mode="eval").body)
    except SyntaxError as err:
        raise ToolCallError(f"calculator: {expression!r} is not an expression") from err


def verify(task: Task, answer: str | None) -> bool:
    """The verifier: the answer is the right integer."""
    return answer is not None and answer.strip() == task.answer


class CalculatorEnv:
    """Multiply two 3-digit numbers, with a calculator (a MultiTurnEnv)."""

    name = "calculator"
    max_turns = 3
    tools = [
        function_tool(
            "calculator", "compute an expression", {"expression": ("string", "e.g. 12*34")},
            ["expression"],
        )
    ]  # fmt: skip

    def tasks(self, split: str, n: int) -> list[Task]:
        rng = random.Random(0 if split == "train" else 1)  # test draws from another seed
        pairs = [(rng.randint(100, 999), rng.randint(100, 999)) for _ in range(n)]
        return [Task(f"{split}-{i}", f"What is {a} * {b}?", str(a * b)) for i, (a, b) in
                enumerate(pairs)]  # fmt: skip

    def reset(self, task: Task) -> list[Message]:
        system = f"{render_tools(self.tools)}\nThen reply: Answer: <number>"
        return [{"role": "system", "content": system}, {"role": "user", "content": task.question}]

    def step(self, task: Task, call: ToolCall, state: dict[str, Any]) -> str:
        return str(calculate(call.arguments["expression"]))

    def score(self, task: Task, transcript: list[Message]) -> EpisodeScore:
        answer, _ = parse_answer(final_answer(transcript))
        ok = verify(task, answer)
        used_tool = any(m["role"] == "tool" for m in transcript)
        return EpisodeScore(
            reward=float(ok) + 0.1 * used_tool, correct=ok, well_formed=answer is not None,
            extracted=answer, answer_correct=ok,
        )  # fmt: skip
