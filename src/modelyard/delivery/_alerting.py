"""The alert a rollback raises: an alert state in the store, the log, and the webhook.

The alert is ``rollout_rolled_back`` for the endpoint and the version, firing
from the moment of the rollback (it shows in ``modelyard monitor alerts``);
it is sent to the log and, when the alert rules (``<home>/alerts.yml``) name a
webhook, POSTed there with the same retries as every other alert. It resolves
when a later rollout on the endpoint succeeds. The controller hands the POST to
its ``AlertSender`` (``_sender``): the state and the log are written at once,
the webhook is called off the controller's thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from modelyard.delivery._sender import AlertSender, Post, deliver
from modelyard.errors import ModelyardError
from modelyard.store import AlertNotification, AlertState, Rollout, Store, utcnow

log = logging.getLogger(__name__)

RULE = "rollout_rolled_back"


def load_alerting() -> None:
    """Import what ``rollback_alert`` imports lazily (the monitoring package: most of a
    second on a busy machine), so a controller's first rollback stays within its lease."""
    import modelyard.monitoring  # noqa: F401  (loaded, not used here)


def rollback_alert(
    store: Store,
    rollout: Rollout,
    breach: Mapping[str, Any],
    *,
    sender: AlertSender | None = None,
) -> AlertState:
    """Record, log and send the alert for a rolled-back rollout; the webhook's POST is
    queued on ``sender`` when one is given, else sent before this returns."""
    from modelyard.monitoring import alert_id, post_webhook, rules_from
    from modelyard.settings import load_settings

    now = utcnow()
    labels = {"endpoint": rollout.endpoint, "version": rollout.target_ref}
    summary = f"rollout {rollout.id} of {rollout.target_ref} on {rollout.endpoint} rolled back: "
    summary += str(breach.get("message", "guard breached"))
    alert = AlertState(
        alert_id(RULE, labels), RULE, labels, "critical", "firing", None, summary, now, now,
        None, now,
    )  # fmt: skip
    store.save_alert_state(alert)
    log.warning("alert %s firing: %s", RULE, summary)
    store.add_alert_notification(AlertNotification(alert.id, RULE, "firing", "log", now, True,
                                                   1, None))  # fmt: skip
    try:
        rules = rules_from(None, load_settings().home)
    except ModelyardError as exc:  # a broken rules file must not hide the rollback
        log.error("cannot read the alert rules for the rollback alert: %s", exc.one_line())
        return alert
    hook = rules.notify.webhook if rules is not None else None
    if hook is not None:
        payload = {
            "status": "firing",
            "alert": {"id": alert.id, "rule": RULE, "labels": labels, "severity": "critical",
                      "summary": summary, "rollout": rollout.id, "breach": dict(breach),
                      "fired_at": now.isoformat()},
            "sent_at": now.isoformat(),
        }  # fmt: skip
        post = Post(alert.id, RULE, "firing", hook.url, now,
                    functools.partial(post_webhook, hook, payload))  # fmt: skip
        if sender is not None:
            sender.submit(post)
        else:
            deliver(store, post)
    return alert


def resolve_rollback_alert(store: Store, rollout: Rollout) -> None:
    """A rollout that succeeded on an endpoint resolves that endpoint's rollback alerts."""
    now = utcnow()
    for alert in store.list_alert_states(state="firing"):
        if alert.rule == RULE and alert.labels.get("endpoint") == rollout.endpoint:
            store.save_alert_state(
                AlertState(
                    alert.id,
                    RULE,
                    alert.labels,
                    alert.severity,
                    "resolved",
                    None,
                    alert.summary,
                    alert.active_since,
                    alert.fired_at,
                    now,
                    now,
                )
            )
            store.add_alert_notification(
                AlertNotification(alert.id, RULE, "resolved", "log", now, True, 1, None)
            )
