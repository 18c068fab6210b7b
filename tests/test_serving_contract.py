"""The HTTP API keeps its contract under hostile input (issue 13, points 17-19).

* non-finite JSON numbers (``NaN``, ``Infinity``, ``1e400``) anywhere in a body are a
  422 with a reason, never a 500;
* every status a route sends is documented for that route in the OpenAPI schema, and
  every body validates against the documented shape (a bounded, seeded random
  request generator in the spirit of schemathesis, in-process through TestClient);
* ``/health`` names the bundle and its fingerprint, never a filesystem path.
"""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient

from marl_two_tower.config import ServingConfig, load_config
from marl_two_tower.data import load_split
from marl_two_tower.model.build import build_model
from marl_two_tower.serving.commands import build_recommender, display_name
from marl_two_tower.serving.export import BUNDLE_FILE, export_bundle, load_bundle
from marl_two_tower.serving.recommender import Recommender
from marl_two_tower.serving.service import create_app

jsonschema = pytest.importorskip("jsonschema")

TINY = ["data.synthetic.n_users=120", "data.synthetic.n_items=90", "model.dim=8",
        "model.id_dim=8", "model.hidden=16"]
SERVING = ServingConfig(max_k=40, max_batch=6)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, recommender, bundle folder) of an untrained tiny model: the contract
    does not depend on the weights."""
    cfg = load_config(None, TINY)
    split = load_split(cfg.data)
    out = export_bundle(build_model(cfg, split).eval(), cfg, split,
                        tmp_path_factory.mktemp("deploy") / "bundle-tiny",
                        source=str(tmp_path_factory.getbasetemp() / "secret" / "model_best.pt"))
    rec = build_recommender(bundle=str(out))  # as `serve --bundle` does
    rec = Recommender(rec.bundle, SERVING)  # smaller limits, to reach them cheaply
    app = create_app(rec, SERVING, name=display_name(str(out)))
    return TestClient(app, raise_server_exceptions=False), rec, out


# ---------------------------------------------------------------------------
# 17. non-finite numbers
# ---------------------------------------------------------------------------

NON_FINITE = [
    b'{"users": [{"user_id": 1}], "k": NaN}',
    b'{"users": [{"user_id": 1}], "k": Infinity}',
    b'{"users": [{"user_id": 1}], "k": -Infinity}',
    b'{"users": [{"user_id": 1}], "k": 1e400}',
    b'{"users": [{"user_id": NaN}]}',
    b'{"users": [{"user_id": Infinity}]}',
    b'{"users": [{"user_id": 1e400}]}',
    b'{"users": [{"user_id": 1, "exclude": [NaN]}]}',
    b'{"users": [{"user_id": 1, "exclude": [2, -1e400]}]}',
    b'{"users": [{"user_id": 1, "features": {"gender": NaN}}]}',
    b'{"users": [{"user_id": 1, "features": NaN}]}',
    b'{"users": NaN}',
]


@pytest.mark.parametrize("body", NON_FINITE)
def test_non_finite_json_numbers_are_422_with_a_reason(served, body):
    client, _, _ = served
    r = client.post("/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    doc = r.json()
    assert isinstance(doc["detail"], str) and "non-finite" in doc["detail"]
    assert all(isinstance(e["loc"], list) and e["msg"] for e in doc["errors"])


# ---------------------------------------------------------------------------
# 18. schema and responses agree
# ---------------------------------------------------------------------------


class Oracle:
    """Validates a response against the app's own OpenAPI document."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec

    def check(self, method: str, route: str, r) -> None:
        op = self.spec["paths"][route][method.lower()]
        documented = op["responses"]
        where = f"{method} {route} -> {r.status_code}: {r.text[:300]}"
        assert str(r.status_code) in documented, f"undocumented status: {where}"
        content = documented[str(r.status_code)].get("content", {})
        assert "application/json" in content, f"no documented body: {where}"
        schema = dict(content["application/json"]["schema"], components=self.spec["components"])
        try:
            jsonschema.Draft202012Validator(schema).validate(r.json())
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"body does not match the schema: {where}: {exc.message}") from None


def _random_value(rng: random.Random, known: list) -> object:
    pool = [*known, "ghost", "", " ", "x" * 300, -1, 0, 2**63, 2**70, 1.5, True, None, [], {},
            "é", "1e400", float("nan"), float("inf"), -float("inf"), 1e300]
    return rng.choice(pool)


def _random_query(rng: random.Random, known: list) -> str:
    return str(rng.choice([*map(str, known), "", "0", "-1", "abc", "1e400", "nan", "inf", "Infinity",
                           "5", "40", "41", "2.5", "ghost", "y" * 300, "é", "gender:F", "gender",
                           "gender:Q", "planet:mars", ":", "1000000000000000000000"]))


def _random_body(rng: random.Random, users: list, items: list) -> bytes:
    kind = rng.random()
    if kind < 0.1:
        return rng.choice([b"", b"{not json", b"[]", b"null", b"1e400", b"NaN", b'"users"',
                           b'{"users": [', b"{}", b'{"users": {}}'])
    n = rng.choice([0, 1, 2, 3, SERVING.max_batch, SERVING.max_batch + 1])
    if rng.random() < 0.3:  # well-formed users: reaches the batch limit and the model
        body: dict = {"users": [{"user_id": rng.choice([*users, "ghost"])} for _ in range(n)]}
    else:
        body = {"users": [_random_user(rng, users, items) for _ in range(n)]}
    if rng.random() < 0.7:
        body["k"] = rng.choice([1, 5, 40, 41, 0, -3, 2.5, "10", None, True, float("nan"),
                                float("inf"), 10**30])
    if rng.random() < 0.1:
        body["extra"] = rng.choice([1, "x", None])
    return json.dumps(body, allow_nan=True).encode()


def _random_user(rng: random.Random, users: list, items: list) -> object:
    if rng.random() < 0.05:
        return _random_value(rng, users)
    u: dict = {"user_id": _random_value(rng, users)}
    if rng.random() < 0.4:
        u["exclude"] = [_random_value(rng, items) for _ in range(rng.randint(0, 4))]
    if rng.random() < 0.3:
        u["features"] = rng.choice([{"gender": "F"}, {"gender": "Q"}, {"planet": "mars"},
                                    {"gender": float("nan")}, {}, None, [], "F", {"age": 1}])
    return u


def test_every_response_is_documented_and_matches_its_schema(served):
    client, rec, _ = served
    spec = client.get("/openapi.json").json()
    oracle = Oracle(spec)
    rng = random.Random(20240613)
    users, items = rec.user_ids[:3], rec.item_ids[:3]
    seen_status: set[int] = set()
    for _ in range(500):
        route = rng.choice(["/health", "/recommend", "/recommend", "/recommend", "/items/{item_id}",
                            "/explain"])
        if route == "/recommend" and rng.random() < 0.5:
            method = "POST"
            ctype = rng.choice(["application/json"] * 4 + ["text/plain"])
            r = client.post(route, content=_random_body(rng, users, items),
                            headers={"content-type": ctype})
        elif route == "/items/{item_id}":
            method = "GET"
            r = client.get("/items/" + rng.choice([*map(str, items), "ghost", "-1", "é", "x" * 300]))
        else:
            method = "GET"
            names = {"/health": [], "/recommend": ["user_id", "k", "exclude", "feature"],
                     "/explain": ["user_id", "item_id"]}[route]
            params = [(n, _random_query(rng, users if n == "user_id" else items))
                      for n in names if rng.random() < 0.8]
            params += [(n, _random_query(rng, items)) for n in ("exclude", "feature")
                       if route == "/recommend" and rng.random() < 0.3]
            r = client.get(route, params=params)
        assert r.status_code != 500, f"{method} {route}: {r.text[:300]}"
        oracle.check(method, route, r)
        seen_status.add(r.status_code)
    assert {200, 404, 413, 422} <= seen_status  # the generator reached every kind of answer


def test_declared_limits_and_bad_headers_are_documented(served):
    client, rec, _ = served
    oracle = Oracle(client.get("/openapi.json").json())
    big = {"users": [{"user_id": 1}] * (SERVING.max_batch + 1)}
    oracle.check("POST", "/recommend", client.post("/recommend", json=big))
    r = client.get("/health", headers={"content-length": "abc"})
    assert r.status_code == 400
    oracle.check("GET", "/health", r)
    r = client.get("/recommend", params={"user_id": rec.user_ids[0], "k": 41})
    assert r.status_code == 422 and "max_k" in r.json()["detail"]
    oracle.check("GET", "/recommend", r)


# ---------------------------------------------------------------------------
# 19. /health
# ---------------------------------------------------------------------------


def test_health_names_the_bundle_not_a_path(served, tmp_path_factory):
    client, rec, out = served
    h = client.get("/health").json()
    text = json.dumps(h)
    assert str(tmp_path_factory.getbasetemp()) not in text and "secret" not in text
    assert h["bundle"]["name"] == "bundle-tiny" == display_name(str(out / BUNDLE_FILE))
    assert display_name(str(out.parent / "ck" / "model_best.pt")) == "model_best.pt"
    # without a name, the source's file name only (here the checkpoint it came from)
    plain = TestClient(create_app(rec, SERVING)).get("/health").json()
    assert plain["bundle"]["name"] == "model_best.pt" and "secret" not in json.dumps(plain)
    fp = h["bundle"]["fingerprint"]
    assert len(fp) == 16 and int(fp, 16) >= 0
    # the fingerprint identifies what is served: same bundle -> same, other weights -> other
    again = TestClient(create_app(Recommender(load_bundle(out), SERVING), SERVING))
    assert again.get("/health").json()["bundle"]["fingerprint"] == fp
    cfg = load_config(None, TINY + ["seed=7"])
    split = load_split(cfg.data)
    other = export_bundle(build_model(cfg, split).eval(), cfg, split, tmp_path_factory.mktemp("o"))
    h2 = TestClient(create_app(Recommender(load_bundle(other), SERVING), SERVING)).get("/health").json()
    assert h2["bundle"]["fingerprint"] != fp
