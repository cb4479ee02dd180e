"""OpenID Connect bearer tokens: a JWKS served on 127.0.0.1 by the test (``oidc_idp``),
keys made there, tokens signed by joserfc; the verifier alone and behind the admin API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt

from modelyard.access import (
    JWKSCache,
    OIDCConfig,
    OIDCVerifier,
    PeopleAuthenticator,
    parse_group_roles,
)
from modelyard.admin import create_admin_app
from modelyard.audit import AccessPolicy
from modelyard.errors import AuthError, ConfigError, IdentityProviderUnavailable
from modelyard.settings import Settings
from modelyard.store import Store
from oidc_idp import AUDIENCE, IdP, running_idp
from worlds import fake_world


@pytest.fixture
def idp() -> Iterator[IdP]:
    with running_idp() as provider:
        yield provider


def _verifier(idp: IdP, **kw: Any) -> OIDCVerifier:
    config = OIDCConfig(issuer=idp.url, audience=AUDIENCE, **kw)
    return OIDCVerifier(config)


def _refused(verifier: OIDCVerifier, token: str) -> str:
    with pytest.raises(AuthError) as info:
        verifier.verify(token)
    return info.value.message


def test_a_valid_token_names_its_actor_and_role(idp: IdP) -> None:
    idp.add_key("ec1", kind="EC")  # ES256 as well as RS256
    verifier = _verifier(idp, group_roles={"ml-leads": "approver", "ml": "developer"})
    who = verifier.verify(idp.token(groups=["ml", "ml-leads", "other"]))
    assert who.actor == "alice" and who.role == "approver"
    assert verifier.verify(idp.token(groups=["other"])).role is None
    by_name = _verifier(idp, actor_claim="preferred_username")
    assert by_name.verify(idp.token(preferred_username="al")).actor == "al"
    assert "preferred_username" in _refused(by_name, idp.token())
    assert verifier.verify(idp.token(kid="ec1", alg="ES256")).actor == "alice"


def test_expired_wrong_audience_wrong_issuer_unknown_key_and_tampered_are_refused(
    idp: IdP,
) -> None:
    verifier = _verifier(idp, refresh_s=60)
    now = int(time.time())
    assert "expired" in _refused(verifier, idp.token(exp=now - 120))
    assert "aud" in _refused(verifier, idp.token(aud="someone-else"))
    assert "iss" in _refused(verifier, idp.token(iss="https://evil.example"))
    assert "exp" in _refused(verifier, idp.token(exp=None))  # exp is required
    idp.add_key("rogue", publish=False)  # a key the issuer never published
    assert "does not publish" in _refused(verifier, idp.token(kid="rogue"))
    header, payload, signature = idp.token().split(".")
    forged = jwt.encode({"alg": "RS256"}, {"sub": "mallory"}, idp.signing["k1"]).split(".")[1]
    assert "signature" in _refused(verifier, ".".join([header, forged, signature]))
    assert "not a valid JWT" in _refused(verifier, "a.b.c")
    unsigned = "eyJhbGciOiJub25lIn0." + payload + "."  # {"alg": "none"}, no signature
    _refused(verifier, unsigned)


def test_a_rotated_key_is_fetched_at_most_once_per_interval(idp: IdP) -> None:
    clock = [1000.0]
    config = OIDCConfig(issuer=idp.url, audience=AUDIENCE, refresh_s=30, ttl_s=3600)
    verifier = OIDCVerifier(config, cache=JWKSCache(config, clock=lambda: clock[0]))
    verifier.verify(idp.token())
    assert idp.fetches == 1  # discovery, then the keys
    idp.add_key("k2", publish=False)
    clock[0] += 1
    _refused(verifier, idp.token(kid="k2"))  # unknown kid: one fetch within the interval...
    _refused(verifier, idp.token(kid="k2"))
    assert idp.fetches == 1
    idp.published.append("k2")  # the issuer rotates: k2 published
    clock[0] += 30
    assert verifier.verify(idp.token(kid="k2")).actor == "alice"  # ... then it is picked up
    assert idp.fetches == 2
    verifier.verify(idp.token(kid="k1"))
    assert idp.fetches == 2  # known keys: no fetch
    clock[0] += 3600
    verifier.verify(idp.token(kid="k1"))
    assert idp.fetches == 3  # the cache's time is up


def test_an_unreachable_issuer_is_503_not_a_crash() -> None:
    config = OIDCConfig(issuer="http://127.0.0.1:9", audience=AUDIENCE)
    idp = IdP("http://127.0.0.1:9")
    idp.add_key("k1")
    with pytest.raises(IdentityProviderUnavailable):
        OIDCVerifier(config).verify(idp.token())


def test_settings_and_group_mapping() -> None:
    assert OIDCConfig.from_settings(Settings()) is None
    with pytest.raises(ConfigError, match="AUDIENCE"):
        OIDCConfig.from_settings(Settings(oidc_issuer="https://idp.example"))
    config = OIDCConfig.from_settings(
        Settings(
            oidc_issuer="https://idp.example",
            oidc_audience="my",
            oidc_group_roles="ml-admins=admin, ml=viewer",
        )
    )
    assert config is not None and config.group_roles == {"ml-admins": "admin", "ml": "viewer"}
    with pytest.raises(ConfigError):
        parse_group_roles("ml-admins=root")
    with pytest.raises(ConfigError, match="https"):
        OIDCConfig(issuer="http://idp.example", audience="a")  # tokens' keys in clear text


def test_oidc_tokens_on_the_admin_api(idp: IdP, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    policy = AccessPolicy(bootstrap_admin="ops")
    with Store.open(url, actor="ops", audit_key="oidc-test-key-oidc-test", policy=policy) as ops:
        ops.add_actor("ops", "admin")
        ops.add_actor("carol", "viewer")  # the actors table wins over groups
        fake_world(ops, endpoint=None)
        verifier = _verifier(idp, group_roles={"ml-leads": "approver"})
        app = create_admin_app(ops, PeopleAuthenticator(ops, verifier))
        client = TestClient(app)

        def whoami(token: str) -> Any:
            return client.get("/whoami", headers={"Authorization": f"Bearer {token}"})

        r = whoami(idp.token(groups=["ml-leads"]))
        assert r.status_code == 200, r.text
        assert r.json() == {"actor": "alice", "role": "approver", "via": "oidc",
                            "scopes": ["read", "write"], "token_id": None}  # fmt: skip
        assert whoami(idp.token(sub="bob")).json()["role"] == "developer"  # the default
        assert whoami(idp.token(sub="carol", groups=["ml-leads"])).json()["role"] == "viewer"
        assert whoami(idp.token(sub="ops")).json()["role"] == "admin"
        expired = whoami(idp.token(exp=int(time.time()) - 100))
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "unauthorized"
        assert whoami(idp.token(aud="other")).status_code == 401
        # a change made with an OIDC token is audited as the token's actor
        r = client.post(
            "/models/bot/versions/1/archive",
            headers={"Authorization": f"Bearer {idp.token(sub='carol', groups=['ml-leads'])}"},
        )
        assert r.status_code == 403
        refusal = ops.list_audit_events(action="permission.denied", limit=1)[0]
        assert refusal.actor == "carol" and refusal.payload["role"] == "viewer"
        # without an issuer configured, a JWT is refused with a clear reason
        plain = TestClient(create_admin_app(ops))
        r = plain.get("/whoami", headers={"Authorization": f"Bearer {idp.token()}"})
        assert r.status_code == 401 and "no issuer is configured" in r.json()["error"]["message"]


def test_a_token_with_groups_that_are_not_names_grants_no_role_and_is_no_500(idp: IdP) -> None:
    """An IdP that sends groups as objects (``[{"name": "ml-leads"}]``) or numbers: no role
    from them, and no crash (a dict in the list raised TypeError, a 500 on the admin API)."""
    verifier = _verifier(idp, group_roles={"ml-leads": "approver"})
    odd = verifier.verify(idp.token(groups=[{"name": "ml-leads"}, ["ml-leads"], 7, "ml-leads"]))
    assert odd.actor == "alice" and odd.role == "approver"  # the one name in it counts
    assert verifier.verify(idp.token(groups=[{"name": "ml-leads"}])).role is None
    assert verifier.verify(idp.token(groups={"ml-leads": True})).role is None
