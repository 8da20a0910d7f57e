#!/usr/bin/env bash
# The deployment, built and run for real:
#   1. builds loops-webhooks:local from deploy/Dockerfile;
#   2. starts deploy/compose.yaml (Redis, the receiver, two workers, the dashboard) in a
#      scratch directory with its own .env (your deploy/.env is never read or touched), as
#      project loops-webhooks-smoke, the receiver published on 127.0.0.1:$SMOKE_PORT and the
#      dashboard on 127.0.0.1:$SMOKE_DASHBOARD_PORT, and checks that the dashboard answers /login;
#   3. sends signed events to that port and checks that a worker handled them, that the
#      webhook port refuses bad signatures and serves no /metrics, and that the metrics ports
#      count what happened;
#   4. builds deploy/smoke-shop (a shop's handler package, its Dockerfile FROM
#      loops-webhooks:local as the README says), runs it with compose.handlers.yaml and checks
#      that the shop's handler ran;
#   5. tears everything down (containers, network, volume, the shop's image).
# Exit 0 only when every check held; the last line is a one-line summary.
#
# Environment:
#   CONTAINER_ENGINE  docker or podman (default: docker if its daemon answers, else podman);
#                     compose is `docker compose`, or podman-compose (else `podman compose`)
#   BASE_IMAGE        the Dockerfile's base image (default python:3.11-slim)
#   BUILD_OPTS        extra options for every image build (word-split)
#   REDIS_IMAGE       the Redis image (default redis:7)
#   SMOKE_PORT        the host port for the receiver (default 18080)
#   SMOKE_DASHBOARD_PORT  the host port for the dashboard (default 18081)
#
# Without a Docker daemon or a registry (podman, images made from Debian's packages): see
# "Running smoke.sh with podman" in deploy/README.md.
set -uo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$DEPLOY")
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
BUILD_OPTS=${BUILD_OPTS:-}
REDIS_IMAGE=${REDIS_IMAGE:-redis:7}
SMOKE_PORT=${SMOKE_PORT:-18080}
SMOKE_DASHBOARD_PORT=${SMOKE_DASHBOARD_PORT:-18081}
IMAGE=loops-webhooks:local
SHOP_IMAGE=loops-webhooks-smoke-shop:local
PROJECT=loops-webhooks-smoke
WEBHOOK_URL="http://127.0.0.1:${SMOKE_PORT}/webhooks/loops"
TIMEOUT_SECONDS=120

passed=0
failed=()

say() { printf 'smoke: %s\n' "$*"; }

summary() {
    local engine=${CONTAINER_ENGINE:-none}
    if [ "${#failed[@]}" -eq 0 ] && [ "$passed" -gt 0 ]; then
        say "PASS: ${passed} checks held (engine ${engine}, base ${BASE_IMAGE}, redis ${REDIS_IMAGE})"
    else
        local IFS=';'
        say "FAIL: ${#failed[@]} of $((passed + ${#failed[@]})) checks failed (engine ${engine}):${failed[*]}"
    fi
}

check() { # check DESCRIPTION COMMAND...: run COMMAND, record whether it succeeded
    local description=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        say "ok   ${description}"
    else
        failed+=(" ${description}")
        say "FAIL ${description}"
    fi
}

abort() { # a step without which no later check means anything
    failed+=(" $*")
    say "FAIL $*"
    exit 1
}

WORK=""
teardown() {
    local status=$?
    if [ -n "$WORK" ]; then
        say "tearing down"
        compose down -v >/dev/null 2>&1
        engine rmi -f "$SHOP_IMAGE" >/dev/null 2>&1
        rm -rf "$WORK"
    fi
    summary
    if [ "${#failed[@]}" -ne 0 ] && [ "$status" -eq 0 ]; then status=1; fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# --- the engine ---------------------------------------------------------------------------

if [ -z "${CONTAINER_ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        CONTAINER_ENGINE=docker
    elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then
        CONTAINER_ENGINE=podman
    else
        abort "neither docker nor podman works here (set CONTAINER_ENGINE)"
    fi
fi
case "$CONTAINER_ENGINE" in
    docker)
        COMPOSE=(docker compose)
        ENGINE_BUILD_OPTS=()
        ;;
    podman)
        if command -v podman-compose >/dev/null; then COMPOSE=(podman-compose); else COMPOSE=(podman compose); fi
        # podman's default OCI format drops HEALTHCHECK; the Docker format keeps it.
        ENGINE_BUILD_OPTS=(--format docker)
        ;;
    *) abort "CONTAINER_ENGINE must be docker or podman, not ${CONTAINER_ENGINE}" ;;
esac
engine() { "$CONTAINER_ENGINE" "$@"; }
read -r -a EXTRA_BUILD_OPTS <<<"$BUILD_OPTS"
build() { engine build "${ENGINE_BUILD_OPTS[@]}" "${EXTRA_BUILD_OPTS[@]}" "$@"; }

# --- the scratch directory ----------------------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/loops-webhooks-smoke.XXXXXX")
cp "$DEPLOY/compose.yaml" "$DEPLOY/compose.handlers.yaml" "$DEPLOY/redis.conf" "$WORK/"
SECRET="whsec_smoke_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
REDIS_PASSWORD=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
DASHBOARD_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')  # 64 characters
cat >"$WORK/.env" <<EOF
LOOPS_WEBHOOK_SECRET=${SECRET}
REDIS_PASSWORD=${REDIS_PASSWORD}
LOOPS_DASHBOARD_TOKEN=${DASHBOARD_TOKEN}
REDIS_IMAGE=${REDIS_IMAGE}
RECEIVER_PORT=${SMOKE_PORT}
DASHBOARD_PORT=${SMOKE_DASHBOARD_PORT}
EOF
COMPOSE_FILES=(-f compose.yaml)

compose() { (cd "$WORK" && "${COMPOSE[@]}" -p "$PROJECT" "${COMPOSE_FILES[@]}" "$@"); }

# --- helpers -------------------------------------------------------------------------------

signature() { printf '%s' "$1" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.*= *//'; }

event_body() { # event_body ID
    printf '{"id":"%s","type":"checkout.session.completed","created":"2025-01-15T10:35:00Z","data":{"id":"cs_%s","url":"https://checkout.loops.fi/cs_%s","status":"completed","paymentLinkId":"pl_smoke","externalCustomerId":"customer_smoke","metadata":{"orderId":"order_%s"},"createdAt":"2025-01-15T10:30:00Z","completedAt":"2025-01-15T10:35:00Z"}}' \
        "$1" "$1" "$1" "$1"
}

post() { # post BODY SIGNATURE: prints the response body, then the HTTP status on a line
    curl -s -w '\n%{http_code}' --max-time 10 -X POST "$WEBHOOK_URL" \
        -H 'content-type: application/json' -H "loops-signature: $2" --data-binary "$1"
}

status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1"; }

in_worker() { compose exec -T worker "$@"; }
in_receiver() { compose exec -T receiver "$@"; }

scrape() { # scrape CONTAINER: its /metrics, from inside it (the metrics port is not published)
    engine exec "$1" python -c \
        "import os, urllib.request; print(urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"LOOPS_METRICS_PORT\"]}/metrics', timeout=5).read().decode())"
}

containers_of() { # containers_of SERVICE: the names of its running containers
    engine ps --filter "label=com.docker.compose.project=${PROJECT}" \
        --filter "label=com.docker.compose.service=$1" --format '{{.Names}}'
}

sample_sum() { # sample_sum REGEX CONTAINER...: the sum of the matching samples of their /metrics
    local regex=$1 container
    shift
    for container in "$@"; do scrape "$container"; done \
        | awk -v regex="$regex" '$1 ~ regex { total += $2 } END { print total + 0 }'
}

eventually() { # eventually COMMAND...: true once COMMAND succeeds within TIMEOUT_SECONDS
    local deadline=$((SECONDS + TIMEOUT_SECONDS))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 2
    done
}

receiver_ready() { [ "$(status_of "http://127.0.0.1:${SMOKE_PORT}/readyz")" = 200 ]; }

dashboard_answers_login() { [ "$(status_of "http://127.0.0.1:${SMOKE_DASHBOARD_PORT}/login")" = 200 ]; }

handled_by() { # handled_by EVENT_ID HANDLER: the event is done, and so is the handler whose
    # name is, or ends in, HANDLER (the examples are named module:function)
    local shown
    shown=$(in_worker loops-webhooks events show "$1" --json 2>/dev/null | tr -d ' \n') || return 1
    [[ "$shown" == *'"status":"done"'* ]] && [[ "$shown" == *"$2\":{\"status\":\"done\""* ]]
}

all_handled_by() { # all_handled_by HANDLER ID...
    local handler=$1 id
    shift
    for id in "$@"; do handled_by "$id" "$handler" || return 1; done
}

send_events() { # send_events PREFIX COUNT: posts COUNT signed events, prints their ids
    local i id body
    for i in $(seq 1 "$2"); do
        id="evt_${1}_${i}_$(date +%s)"
        body=$(event_body "$id")
        [ "$(post "$body" "$(signature "$body")" | tail -n 1)" = 200 ] || return 1
        echo "$id"
    done
}

shop_handler_logged() { compose logs worker 2>&1 | grep -q 'smoke shop fulfilled'; }

# --- 1. the image -------------------------------------------------------------------------

say "engine ${CONTAINER_ENGINE}, compose: ${COMPOSE[*]}, base image ${BASE_IMAGE}"
say "building ${IMAGE} from deploy/Dockerfile"
build -f "$DEPLOY/Dockerfile" -t "$IMAGE" --build-arg "BASE_IMAGE=${BASE_IMAGE}" "$REPO" \
    || abort "the image ${IMAGE} builds from deploy/Dockerfile"
check "the image ${IMAGE} builds from deploy/Dockerfile" true

# --- 2. the stack -------------------------------------------------------------------------

say "starting the stack (project ${PROJECT})"
compose up -d || abort "compose up starts the stack"
eventually receiver_ready || abort "the receiver is ready on 127.0.0.1:${SMOKE_PORT}"
check "the receiver answers /readyz on 127.0.0.1:${SMOKE_PORT}" true
mapfile -t workers < <(containers_of worker)
check "two workers run" [ "${#workers[@]}" = 2 ]
check "the dashboard answers /login on 127.0.0.1:${SMOKE_DASHBOARD_PORT}" \
    eventually dashboard_answers_login

# --- 3. events through the published port --------------------------------------------------

mapfile -t ids < <(send_events smoke 5)
check "5 signed events are accepted (200)" [ "${#ids[@]}" = 5 ]
first_body=$(event_body "${ids[0]:-none}")
redelivered=$(post "$first_body" "$(signature "$first_body")" | tr -d ' \n')
check "a redelivered event is answered 200 as a duplicate" \
    grep -q '"duplicate":true}200$' <<<"$redelivered"
check "a bad signature is refused (401)" \
    [ "$(post "$first_body" "$(printf '0%.0s' {1..64})" | tail -n 1)" = 401 ]
check "the webhook port serves no /metrics (404)" [ "$(status_of "http://127.0.0.1:${SMOKE_PORT}/metrics")" = 404 ]
check "every event is handled by fulfil_order (events show, in a worker)" \
    eventually all_handled_by fulfil_order "${ids[@]}"
stats=$(in_worker loops-webhooks stats --json 2>&1)
say "stats: $(printf '%s' "$stats" | tr -d ' \n')"
check "stats --json runs in a worker" [ -n "$stats" ]
mapfile -t receivers < <(containers_of receiver)
accepted=$(sample_sum '^loops_webhooks_requests_total[{]outcome="accepted"[}]$' "${receivers[@]}")
check "the receiver's metrics port counts 5 accepted events (${accepted})" [ "$accepted" = 5 ]
runs=$(sample_sum '^loops_webhooks_handler_runs_total[{]handler="[^"]*fulfil_order",outcome="done"[}]$' \
    "${workers[@]}")
check "the workers' metrics ports count 5 runs of fulfil_order (${runs})" [ "$runs" = 5 ]

# --- 4. a shop's handlers in a derived image ------------------------------------------------

say "building ${SHOP_IMAGE} from deploy/smoke-shop (FROM ${IMAGE})"
if build -t "$SHOP_IMAGE" "$DEPLOY/smoke-shop"; then
    check "the shop's image builds FROM ${IMAGE}" true
    compose down >/dev/null 2>&1
    cat >>"$WORK/.env" <<EOF
WEBHOOKS_IMAGE=${SHOP_IMAGE}
HANDLERS_BUILD_CONTEXT=${DEPLOY}/smoke-shop
EOF
    COMPOSE_FILES=(-f compose.yaml -f compose.handlers.yaml)
    say "starting the stack with compose.handlers.yaml"
    if compose up -d && eventually receiver_ready; then
        check "the stack runs the shop's image" true
        mapfile -t shop_ids < <(send_events shop 2)
        check "2 signed events are accepted by the shop's stack" [ "${#shop_ids[@]}" = 2 ]
        check "the shop's handler smoke_shop_fulfil handled them" \
            eventually all_handled_by smoke_shop_fulfil "${shop_ids[@]}"
        check "the shop's handler logged its line" eventually shop_handler_logged
    else
        check "the stack runs the shop's image" false
    fi
else
    check "the shop's image builds FROM ${IMAGE}" false
fi
