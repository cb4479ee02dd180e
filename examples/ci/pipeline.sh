#!/usr/bin/env bash
# Train, gate and deliver a new version of one tenant's adapter; every step is a modelyard
# command whose exit code decides. The same steps run in examples/ci/github-actions.yml.
#
#   MODELYARD_STORE_URL=postgresql://... MODELYARD_AUDIT_KEY=... examples/ci/pipeline.sh
#
# finetune.yaml registers the version and, when its gates pass, sets the alias
# `challenger` (registry.alias_on_pass: challenger); the rollout then moves the endpoint
# to the version this run registered (its exact ref, not `@challenger`: a second pipeline
# of the same model may have moved that alias since) in steps and, if every guard holds,
# moves `champion` to it as well.
set -euo pipefail

DATA=${DATA:-data/claims-train.jsonl}
CONFIG=${CONFIG:-finetune.yaml}
ENDPOINT=${ENDPOINT:-acme-support}
# the data format is the one the config trains with (its data.format), unless FORMAT is set
FORMAT=${FORMAT:-$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["format"])' "$CONFIG")}

# 1. the data: no personal data, no duplicates, nothing empty (exit 1 when a rule trips)
modelyard data validate "$DATA" --format "$FORMAT" \
    --fail-on pii --fail-on duplicates --fail-on empty-fields

# 2. train, evaluate and gate (exit 1 when a gate fails: nothing moves); REF is the version
#    it registered, e.g. acme-claims:7, read from its JSON result
modelyard finetune -c "$CONFIG" --json > finetune-result.json
REF=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["ref"])' finetune-result.json)

# 3. deliver: canary 10% → 50% → 100%, rolled back by itself on a breached guard
modelyard rollout start "$ENDPOINT" --to "$REF" \
    --steps 10,50,100 --bake 10m --min-requests 200 \
    --guard "error_rate <= 0.02" \
    --guard "p95_latency_ms <= 1.2 * baseline" \
    --guard "feedback_score >= baseline - 0.05" \
    --promote-alias champion

# 4. gate the pipeline on the outcome: 0 succeeded, 1 rolled back or aborted, 3 timed out
modelyard rollout wait "$ENDPOINT" --timeout 2h
modelyard rollout status "$ENDPOINT"
