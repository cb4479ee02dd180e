"""Who a config registers for: the tenant and model that ``registry:`` names, checked first.

The store would refuse a tenant that does not exist only at registration, after the
training and the evaluation; and a model that exists already keeps its owner, so a
``registry.tenant`` that differs from it must be refused, not ignored. ``modelyard
finetune`` and a pipeline's finetune stage both check before any training.

A protected ``registry.alias_on_pass`` with no ``evaluation.gates`` can never move (a
version no gate judged takes a protected alias only with an approver's override), so
``modelyard finetune --check`` refuses it rather than say the config is OK.
"""

from __future__ import annotations

from modelyard.errors import ConfigError, NotFound
from modelyard.finetune._config import FinetuneConfig
from modelyard.store import Store


def check_registry(config: FinetuneConfig, store: Store | None) -> None:
    """``registry.tenant`` exists and owns ``registry.model`` if that exists (``ConfigError``
    naming the field otherwise); ``store`` is ``None`` when there is no store yet."""
    registry = config.registry
    if registry.tenant is not None:
        try:
            if store is None:
                raise NotFound(f"no tenant named {registry.tenant!r}")
            store.get_tenant(registry.tenant)
        except NotFound:
            raise ConfigError(
                f"registry.tenant names no tenant: there is no tenant {registry.tenant!r}",
                hint=f"Create it first with `modelyard tenants create {registry.tenant}`, or "
                "fix the name (`modelyard tenants list`).",
                field="registry.tenant",
            ) from None
    if store is None:
        return
    try:
        existing = store.get_registered_model(registry.model)
    except NotFound:
        return
    if existing.tenant != registry.tenant:
        owner = f"tenant {existing.tenant!r}" if existing.tenant else "no tenant (shared)"
        want = f"tenant {registry.tenant!r}" if registry.tenant else "no tenant"
        raise ConfigError(
            f"registry.model {registry.model!r} exists already and belongs to {owner}, "
            f"but registry.tenant asks for {want}",
            hint="Set registry.tenant to the model's owner, or register under another "
            "registry.model name.",
            field="registry.tenant",
        )


def check_alias_on_pass(config: FinetuneConfig, protected: frozenset[str]) -> None:
    """``ConfigError`` when ``registry.alias_on_pass`` is one of the ``protected`` aliases
    and the config has no gates: the run would train and register a version that cannot
    take the alias, then exit 1."""
    alias = config.registry.alias_on_pass
    if alias is None or alias not in protected or config.evaluation.gates:
        return
    raise ConfigError(
        f"registry.alias_on_pass {alias!r} is a protected alias, and the config has no "
        "evaluation.gates: a version no gate judged never takes it, so the run would train, "
        f"register the version and exit 1 without moving {config.registry.model}@{alias}",
        hint='Add evaluation.gates (e.g. "exact_match >= 0.8") for a passing version to take '
        "it, or leave registry.alias_on_pass out and have an approver move the alias with "
        '`modelyard registry alias ... --override-gates --reason "why"`.',
        field="registry.alias_on_pass",
    )
