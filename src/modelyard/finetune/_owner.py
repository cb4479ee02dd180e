"""Who a config registers for: the tenant and model that ``registry:`` names, checked first.

The store would refuse a tenant that does not exist only at registration, after the
training and the evaluation; and a model that exists already keeps its owner, so a
``registry.tenant`` that differs from it must be refused, not ignored. ``modelyard
finetune`` and a pipeline's finetune stage both check before any training.
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
