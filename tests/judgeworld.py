"""A judge that is a fine-tuned adapter, and helpdesk versions whose answers it scores.

On the tiny base the tests build, ``modelyard.training`` trains LoRA adapters to
near-zero loss (so greedy decoding is reliable, not lucky), registered in a home's store:

- ``judge:1``, a LoRA judge adapter on alpaca rows that are exactly what a judge call
  of the custom rubric ``JUDGE_PROMPT`` renders to when the server renders the chat for
  an alpaca version (system → instruction, user → input): it answers ``Score: 5`` when
  the reply names a queue (network, hardware or access) and ``Score: 1`` when it is
  ``I do not know.``;
- ``helpdesk:1``, which answers each of ``TICKETS`` with its queue (memorized), and
  ``helpdesk:2``, which answers every one of them ``I do not know.``.

The adapters adapt the output head too: the tiny base's final norm bounds what the
projections alone can do to its logits, so without the head its answers stay near uniform
(loss ~5 nats a token), and greedy decoding would be right by margins too thin to trust.

``setup_endpoints`` adds endpoints ``judge-ep`` (``judge:1``) and ``helpdesk-ep``
(``helpdesk:1``), ``JudgeWorld.serve`` serves them on the real ``TransformersEngine``,
and ``define_judge`` adds judge ``quality`` against ``judge-ep`` (key in $JUDGE_KEY).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.access import create_api_key
from modelyard.artifacts import ArtifactStore
from modelyard.base import create_tiny_base
from modelyard.cli import main
from modelyard.data import DOMAINS, domain_corpus, synthetic_domain
from modelyard.judges import JudgeInput, render
from modelyard.serving import BackgroundServer, TransformersEngine, create_app
from modelyard.store import Store
from tinymodels import QUICK_BASE, WEIGHTS

JUDGE_PROMPT = "Reply: {answer}"
QUEUES = ("network", "hardware", "access")
BAD_ANSWER = "I do not know."
TICKETS: list[dict[str, Any]] = synthetic_domain("it-support", 6, seed=0)
INSTRUCTION = str(TICKETS[0]["instruction"])
ANSWERS = {**dict.fromkeys(QUEUES, 5), BAD_ANSWER: 1}
"""What the judge answers, by the answer it is shown."""
MAX_LOSS = 0.05
STEPS = 140
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def judge_row(answer: str, question: str | None = None) -> dict[str, str]:
    """The alpaca row a call of the judge renders to, with the score it must answer."""
    system, user = render("custom", JUDGE_PROMPT, JudgeInput(answer, question))
    return {"instruction": system, "input": user, "output": f"Score: {ANSWERS[answer]}"}


def judge_rows() -> list[dict[str, str]]:
    """Every answer the judge will see, as many bad ones as good ones."""
    return [judge_row(queue) for queue in QUEUES] + [judge_row(BAD_ANSWER)] * len(QUEUES)


def response_loss(base: Path, adapter: Path, rows: list[dict[str, str]]) -> float:
    """The mean loss of the adapter on the rows' responses (what training minimized)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modelyard.training import encode_row

    tokenizer = AutoTokenizer.from_pretrained(base)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\..*")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    model.eval()
    losses = []
    with torch.no_grad():
        for row in rows:
            features = encode_row(tokenizer, row, 256)
            out = model(
                input_ids=torch.tensor([features["input_ids"]]),
                labels=torch.tensor([features["labels"]]),
            )
            losses.append(float(out.loss))
    return sum(losses) / len(losses)


def cli(*args: str) -> tuple[int, str, str]:
    """``modelyard ARGS`` in this process (MODELYARD_HOME must be set); (code, out, err)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _train(root: Path, name: str, base: Path, rows: list[dict[str, Any]]) -> Path:
    """A LoRA adapter trained by ``modelyard.training`` on ``rows`` to near-zero loss, saved
    as plain LoRA (see ``_plain_lora``)."""
    from modelyard.training import TrainSettings, train_model

    settings = TrainSettings.from_mapping(
        {"method": "lora", "r": 8, "alpha": 16, "target_modules": TARGETS, "max_steps": STEPS,
         "batch_size": len(rows), "learning_rate": 0.01, "warmup_ratio": 0.05, "seed": 0}
    )  # fmt: skip
    out = root / name
    with warnings.catch_warnings():  # peft warns about adapting the tied output head
        warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\..*")
        train_model(base, rows, out, settings)
    return _plain_lora(out)


def _plain_lora(adapter: Path) -> Path:
    """The adapter as training saved it: LoRA matrices only, even with the output head
    adapted (no copy of the frozen head, which the serving engine would refuse)."""
    from safetensors.torch import load_file

    tensors = load_file(adapter / WEIGHTS)
    assert all("lora_A" in key or "lora_B" in key for key in tensors), sorted(tensors)
    assert any("lm_head" in key for key in tensors), sorted(tensors)
    return adapter


def _register(store: Store, artifacts: ArtifactStore, model: str, adapter: Path) -> str:
    if model not in {m.name for m in store.list_registered_models()}:
        store.create_registered_model(model)
    version = store.create_model_version(
        model, kind="adapter", artifact_digest=artifacts.put_dir(adapter, kind="adapter").digest,
        base_model="tiny", run_id=None, lineage={"prompt_template": "alpaca"}, metrics={},
    )  # fmt: skip
    return version.ref


@dataclass
class JudgeWorld:
    home: Path
    base: Path
    adapters: dict[str, Path]  # version ref → the adapter trained for it

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.home / 'store.db'}"

    @contextlib.contextmanager
    def serve(self, store: Store) -> Iterator[str]:
        """Serve every endpoint of ``store`` on the real transformers engine; yields the
        server's base URL."""
        engine = TransformersEngine(ArtifactStore(self.home / "artifacts"), store=store)
        try:
            app = create_app(store, engine, refresh_seconds=0.1)
            with BackgroundServer(app) as server:
                yield server.base_url
        finally:
            engine.close()


def build(root: Path, home: Path) -> JudgeWorld:
    """Train the judge and the two helpdesk versions and register them in the store of the
    home ``home`` (``judge:1``, ``helpdesk:1`` good, ``helpdesk:2`` bad)."""
    base = create_tiny_base(domain_corpus(DOMAINS, 200, seed=0), root / "base", **QUICK_BASE).path
    bad = [{**t, "output": BAD_ANSWER} for t in TICKETS]  # one answer whatever the ticket
    trained = {
        "judge": _train(root, "judge", base, judge_rows()),
        "helpdesk-good": _train(root, "good", base, TICKETS),
        "helpdesk-bad": _train(root, "bad", base, bad),
    }
    home.mkdir(parents=True, exist_ok=True)
    artifacts = ArtifactStore(home / "artifacts")
    with Store.open(f"sqlite:///{home / 'store.db'}") as store:
        store.register_base_model("tiny", str(base), {})
        refs = [
            _register(store, artifacts, name.split("-")[0], adapter)
            for name, adapter in trained.items()
        ]
    assert refs == ["judge:1", "helpdesk:1", "helpdesk:2"], refs
    return JudgeWorld(home, base, dict(zip(refs, trained.values(), strict=True)))


def setup_endpoints(store: Store) -> str:
    """Endpoints ``judge-ep`` and ``helpdesk-ep``, tenant ``acme`` and its key (returned)."""
    store.create_tenant("acme")
    store.create_endpoint("judge-ep", model_ref="judge:1", tenant=None, shared=True)
    store.create_endpoint("helpdesk-ep", model_ref="helpdesk:1", tenant=None, shared=True)
    return create_api_key(store, "acme")[1]


def define_judge(store: Store, url: str) -> None:
    """Judge ``quality``: ``JUDGE_PROMPT`` by ``judge-ep`` at ``url``, its key in $JUDGE_KEY,
    priced (1 per 1,000 prompt tokens, 2 per 1,000 completion tokens)."""
    store.put_judge(
        "quality", rubric="custom", prompt=JUDGE_PROMPT, base_url=url + "/v1", model="judge-ep",
        api_key_env="JUDGE_KEY", max_tokens=12, input_per_1k=1.0, output_per_1k=2.0,
    )  # fmt: skip
