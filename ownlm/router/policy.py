"""Routing policies from config: per alias, an ordered list of policies; the first match decides.

    router:
      routes:
        ownlm-auto:                      # the model name the app sends
          default: small
          policies:
            - {kind: rule, when: {tags: {tier: [pro]}}, variant: strong}
            - {kind: rule, when: {min_prompt_tokens: 2000}, variant: strong}
            - {kind: difficulty, classifier: runs/router/difficulty.safetensors,
               threshold: 0.7, variant: strong}
            - {kind: experiment, experiment: small-v2}
      experiments:
        small-v2: {arms: {small: 0.5, small-v2: 0.5}}

The gateway builds one `Router(cfg)` at start, calls `decide(req)` per request (rules cost
microseconds; a difficulty policy costs one sentence embedding, cached by text) and
`update_arm_stats(stats)` from a background task. See docs/router.md.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from ownlm.config import Config
from ownlm.errors import ConfigError
from ownlm.router.experiments import Experiment, ExperimentConfig

if TYPE_CHECKING:
    from ownlm.models.embed import Embedder
    from ownlm.router.classifier import DifficultyScorer
    from ownlm.store.schema import ArmStats


def route_text(messages: list[dict[str, Any]]) -> str:
    """The text the difficulty classifier scores: the last user message (text parts joined).

    The one definition: the gateway routes on it and `classifier.read_store_labels` trains on
    it (tests/router/test_route_text.py checks that they agree on a served trace)."""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(
                    p["text"]
                    for p in content
                    if isinstance(p, dict)
                    and p.get("type") == "text"
                    and isinstance(p.get("text"), str)
                )
            return ""
    return ""


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router sees of a request; `text` is what the difficulty classifier scores."""

    alias: str
    user: str | None
    tags: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    n_messages: int = 0
    text: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The variant that answers and why; the gateway stores it on the trace."""

    variant: str
    reason: str
    experiment: str | None = None
    arm: str | None = None


class Match(Config):
    """Conditions on a request; all given ones must hold. An empty Match matches everything."""

    users: list[str] | None = Field(None, description="the request's user is one of these")
    tags: dict[str, list[str]] = Field(
        default_factory=dict, description="tag key -> accepted values, e.g. {tier: [pro]}"
    )
    min_prompt_tokens: int | None = Field(
        default=None, ge=0, description="prompt size as the router counts it"
    )
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    min_messages: int | None = Field(default=None, ge=0, description="messages in the request")
    max_messages: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_ranges(self) -> Match:
        for lo, hi in (
            ("min_prompt_tokens", "max_prompt_tokens"),
            ("min_messages", "max_messages"),
        ):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is above {hi} ({b}); nothing could match")
        return self

    def describe(self) -> str:
        parts = []
        if self.users is not None:
            parts.append(f"user in {self.users}")
        parts += [f"tags.{k} in {v}" for k, v in self.tags.items()]
        for name in ("min_prompt_tokens", "max_prompt_tokens", "min_messages", "max_messages"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value}")
        return ", ".join(parts) or "always"


class RulePolicy(Config):
    """Send matching requests to `variant`."""

    kind: Literal["rule"]
    name: str | None = Field(None, description="shown in the trace's routing reason")
    when: Match = Field(Match(), description="conditions; empty: every request")
    variant: str = Field(description="the model entry that answers")


class DifficultyPolicy(Config):
    """Send requests whose difficulty score is >= threshold to `variant`; else fall through."""

    kind: Literal["difficulty"]
    name: str | None = Field(None, description="shown in the trace's routing reason")
    when: Match = Field(Match(), description="conditions; empty: every request")
    classifier: str = Field(description="weights file written by `ownlm router train`")
    threshold: float = Field(ge=0.0, le=1.0, description="difficulty score from which it applies")
    variant: str = Field(description="the model entry for hard requests")


class ExperimentPolicy(Config):
    """Assign matching requests to an arm of an experiment from `RouterConfig.experiments`."""

    kind: Literal["experiment"]
    name: str | None = Field(None, description="shown in the trace's routing reason")
    when: Match = Field(Match(), description="conditions; empty: every request")
    experiment: str = Field(description="a name in router.experiments")


Policy = Annotated[RulePolicy | DifficultyPolicy | ExperimentPolicy, Field(discriminator="kind")]


class RouteConfig(Config):
    """Policies tried in order for one alias, and the variant used when none decides."""

    default: str = Field(description="the variant when no policy decides")
    policies: list[Policy] = Field(
        default_factory=list, description="tried in order; `kind` is rule, difficulty or experiment"
    )


class RouterConfig(Config):
    """The router section of the gateway config (`GatewayConfig.router`)."""

    variants: list[str] = Field(
        default_factory=list,
        description="variants rules may name; if empty, Router(cfg, known_variants=...) checks",
    )
    experiments: dict[str, ExperimentConfig] = Field(
        default_factory=dict, description="A/B tests by name (`ownlm promote` adds them)"
    )
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict, description="per model name clients send: policies and a default"
    )
    embedding_cache_size: int = Field(
        default=4096, ge=0, description="prompt embeddings kept for difficulty policies"
    )
    embedding_threads: int = Field(
        default=1, ge=1, description="torch threads per embedding; 1 is fastest on a busy CPU"
    )

    @model_validator(mode="after")
    def _check_names(self) -> RouterConfig:
        problems = unknown_names(self, self.variants or None)
        if problems:
            raise PydanticCustomError("unknown_name", "; ".join(problems))
        return self


def unknown_names(cfg: RouterConfig, known_variants: Collection[str] | None) -> list[str]:
    """Messages for every policy naming an unknown experiment (or variant, if known given)."""
    problems: list[str] = []
    known = set(known_variants) if known_variants is not None else None

    def check(variant: str, where: str) -> None:
        if known is not None and variant not in known:
            problems.append(
                f"{where} names unknown variant '{variant}'; known variants: {sorted(known)}"
            )

    for alias, route in cfg.routes.items():
        check(route.default, f"routes.{alias}.default")
        for i, pol in enumerate(route.policies):
            where = f"routes.{alias}.policies[{i}]"
            if isinstance(pol, ExperimentPolicy):
                if pol.experiment not in cfg.experiments:
                    problems.append(
                        f"{where} names unknown experiment '{pol.experiment}'; "
                        f"defined experiments: {sorted(cfg.experiments)}"
                    )
            else:
                check(pol.variant, where)
    for name, exp in cfg.experiments.items():
        for arm in exp.arms:
            check(arm, f"experiments.{name}.arms")
    return problems


# A compiled policy: request -> Decision, or None to fall through to the next policy.
Step = Callable[[RouteRequest], Decision | None]


def compile_match(m: Match) -> Callable[[RouteRequest], bool] | None:
    """A predicate for m, or None when m matches every request (so the check is skipped)."""
    users = frozenset(m.users) if m.users is not None else None
    tags = tuple((k, frozenset(v)) for k, v in m.tags.items())
    lo_t, hi_t = m.min_prompt_tokens, m.max_prompt_tokens
    lo_m, hi_m = m.min_messages, m.max_messages
    if users is None and not tags and lo_t is hi_t is lo_m is hi_m is None:
        return None

    def matches(req: RouteRequest) -> bool:
        if users is not None and req.user not in users:
            return False
        for key, values in tags:
            if req.tags.get(key) not in values:
                return False
        if lo_t is not None and req.prompt_tokens < lo_t:
            return False
        if hi_t is not None and req.prompt_tokens > hi_t:
            return False
        if lo_m is not None and req.n_messages < lo_m:
            return False
        return hi_m is None or req.n_messages <= hi_m

    return matches


class Router:
    """Decides the variant for each request from a RouterConfig."""

    def __init__(
        self,
        cfg: RouterConfig,
        known_variants: Collection[str] | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """Compile cfg's routes; known_variants: the gateway's variant names, checked if given.

        A difficulty policy loads the embedding model (seconds) unless `embedder` is given.
        """
        problems = unknown_names(cfg, known_variants) if known_variants is not None else []
        if problems:
            raise ConfigError("router: " + "; ".join(problems))
        self.cfg = cfg
        self.experiments = {name: Experiment(name, e) for name, e in cfg.experiments.items()}
        self._embedder = embedder
        self._scorers: dict[str, DifficultyScorer] = {}
        self._routes: dict[str, tuple[tuple[Step, ...], Decision]] = {}
        for alias, route in cfg.routes.items():
            steps = tuple(self._compile(alias, i, p) for i, p in enumerate(route.policies))
            default = Decision(route.default, f"{alias}: no policy matched; default")
            self._routes[alias] = (steps, default)

    @property
    def uses_embeddings(self) -> bool:
        """True when some route has a difficulty policy (decide may then take milliseconds)."""
        return bool(self._scorers)

    def decide(self, req: RouteRequest) -> Decision:
        """The first policy of the alias's route that matches decides; else the default."""
        route = self._routes.get(req.alias)
        if route is None:
            return Decision(req.alias, "no route for alias; passed through")
        steps, default = route
        for step in steps:
            d = step(req)
            if d is not None:
                return d
        return default

    def update_arm_stats(self, stats: list[ArmStats]) -> None:
        """Feed cumulative per-arm stats to every experiment's decision rule."""
        for exp in self.experiments.values():
            exp.update(stats)

    def _compile(self, alias: str, index: int, pol: Policy) -> Step:
        label = pol.name or f"{alias}[{index}]"
        matches = compile_match(pol.when)
        if isinstance(pol, RulePolicy):
            decision = Decision(pol.variant, f"rule {label}: {pol.when.describe()}")
            if matches is None:
                return lambda req: decision
            return lambda req: decision if matches(req) else None
        if isinstance(pol, ExperimentPolicy):
            exp = self.experiments[pol.experiment]
            exp_name = pol.experiment
            prefix = f"experiment {exp_name} ({label}): "

            def assign(req: RouteRequest) -> Decision | None:
                if matches is not None and not matches(req):
                    return None
                arm = exp.assign(req.user)
                return Decision(arm, prefix + exp.status, exp_name, arm)

            return assign
        return self._compile_difficulty(label, pol, matches)

    def _compile_difficulty(
        self, label: str, pol: DifficultyPolicy, matches: Callable[[RouteRequest], bool] | None
    ) -> Step:
        from ownlm.models.embed import TextEmbedder
        from ownlm.router.classifier import DifficultyScorer, read_classifier

        scorer = self._scorers.get(pol.classifier)
        if scorer is None:
            weight, bias, max_length = read_classifier(pol.classifier)
            if self._embedder is None:
                self._embedder = TextEmbedder(
                    max_length,
                    cache_size=self.cfg.embedding_cache_size,
                    num_threads=self.cfg.embedding_threads,
                )
            scorer = DifficultyScorer(self._embedder, weight, bias)
            self._scorers[pol.classifier] = scorer
        threshold, variant = pol.threshold, pol.variant

        def by_difficulty(req: RouteRequest) -> Decision | None:
            if matches is not None and not matches(req):
                return None
            score = scorer.score(req.text)
            if score < threshold:
                return None
            return Decision(variant, f"difficulty {label}: {score:.3f} >= {threshold}")

        return by_difficulty
