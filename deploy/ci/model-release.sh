#!/usr/bin/env bash
# Releases a new version of the model: validate -> evaluate (gates) -> canary (watched) -> promote.
#
#   deploy/ci/model-release.sh --config deploy/config/fraud-example.yaml --version 2 \
#       --holdout holdout.jsonl --max-auc-drop 0.01 --max-label-flip 0.05 \
#       --canary-share 0.1 --canary-duration 600 --canary-events 5000
#
# Every option can be given as an environment variable instead (RELEASE_CONFIG, RELEASE_VERSION, ...:
# see usage below). Kafka, Redis and the rest of the worker's settings come from the config file and the
# worker's own WORKER_* variables (WORKER_KAFKA__BOOTSTRAP_SERVERS, WORKER_REDIS__URL, ...), exactly as
# for `worker run`. Needs the `worker` command (the project installed) and python3 (standard library only).
#
# Exit codes: 0 promoted (or already active) | 1 unexpected failure | 2 usage or configuration |
# 10 validation refused the version | 11 an evaluation gate failed | 12 evaluation could not run |
# 13 the canary could not start | 14 the canary was rolled back (by the canary guard) or the desired state
# changed under it | 15 the canary did not serve enough events in time (the script ended it) |
# 16 promotion failed | 130 interrupted (a canary this script started is ended).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: model-release.sh --config C --version V --holdout FILE [gates] [canary options]

  --config C            worker config (RELEASE_CONFIG)
  --version V           the candidate version in model.repository (RELEASE_VERSION)
  --holdout FILE        labelled rows: the input schema plus a label field, .jsonl/.avro/.parquet
                        (RELEASE_HOLDOUT)
  --label-field F       the label field (RELEASE_LABEL_FIELD; default: evaluate's, "label")
gates (at least one; RELEASE_MIN_AUC, RELEASE_MAX_AUC_DROP, RELEASE_MAX_LABEL_FLIP):
  --min-auc X           the candidate's AUC on the holdout is at least X
  --max-auc-drop X      the serving version's AUC minus the candidate's is at most X
  --max-label-flip X    the share of holdout rows whose label changes is at most X
canary:
  --canary-share S      share of keys the canary scores, (0, 1] (RELEASE_CANARY_SHARE; default 0.1)
  --canary-duration S   seconds every replica must serve it (RELEASE_CANARY_DURATION; default 300)
  --canary-events N     predictions it must have published, counted on the output topic (RELEASE_CANARY_EVENTS;
                        default 1000; 0: time only). Make it at least lifecycle.canary.min_events times the
                        number of replicas, or the canary guard may not have judged it yet.
  --canary-timeout S    give up (and end the canary) if N events take longer (RELEASE_CANARY_TIMEOUT; default 1800)
  --version-field F     the output field holding $model_version (RELEASE_VERSION_FIELD; default model_version)
other:
  --wait S              how long each change waits for every replica to apply it (RELEASE_WAIT; default 60)
  --poll S              seconds between status polls while the canary runs (RELEASE_POLL; default 5)
  --settle S            pause before the last check ahead of promotion (RELEASE_SETTLE; default 5)
  --report-dir D        write evaluate.txt, evaluate.png (needs matplotlib), status files there (RELEASE_REPORT_DIR)
  --worker CMD          the worker command (RELEASE_WORKER; default: worker)
  --dry-run             stop after the evaluation (nothing written to the control channel)

exit codes: 0 promoted | 1 unexpected | 2 usage/config | 10 validate refused | 11 gate failed |
            12 evaluate could not run | 13 canary did not start | 14 canary rolled back |
            15 canary inconclusive (not enough events) | 16 promotion failed | 130 interrupted
EOF
}

CONFIG=${RELEASE_CONFIG:-}
VERSION=${RELEASE_VERSION:-}
HOLDOUT=${RELEASE_HOLDOUT:-}
LABEL_FIELD=${RELEASE_LABEL_FIELD:-}
MIN_AUC=${RELEASE_MIN_AUC:-}
MAX_AUC_DROP=${RELEASE_MAX_AUC_DROP:-}
MAX_LABEL_FLIP=${RELEASE_MAX_LABEL_FLIP:-}
CANARY_SHARE=${RELEASE_CANARY_SHARE:-0.1}
CANARY_DURATION=${RELEASE_CANARY_DURATION:-300}
CANARY_EVENTS=${RELEASE_CANARY_EVENTS:-1000}
CANARY_TIMEOUT=${RELEASE_CANARY_TIMEOUT:-1800}
VERSION_FIELD=${RELEASE_VERSION_FIELD:-model_version}
WAIT=${RELEASE_WAIT:-60}
POLL=${RELEASE_POLL:-5}
SETTLE=${RELEASE_SETTLE:-5}
REPORT_DIR=${RELEASE_REPORT_DIR:-}
WORKER_COMMAND=${RELEASE_WORKER:-worker}
DRY_RUN=${RELEASE_DRY_RUN:-0}
PYTHON=${RELEASE_PYTHON:-python3}

die_usage() { echo "model-release: $*" >&2; echo "(--help lists the options)" >&2; exit 2; }

while [ $# -gt 0 ]; do
    case $1 in
        -h|--help) usage; exit 0 ;;
        --dry-run) DRY_RUN=1; shift; continue ;;
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    esac
    [ $# -ge 2 ] || die_usage "$1 needs a value"
    case $1 in
        --config) CONFIG=$2 ;;
        --version) VERSION=$2 ;;
        --holdout) HOLDOUT=$2 ;;
        --label-field) LABEL_FIELD=$2 ;;
        --min-auc) MIN_AUC=$2 ;;
        --max-auc-drop) MAX_AUC_DROP=$2 ;;
        --max-label-flip) MAX_LABEL_FLIP=$2 ;;
        --canary-share) CANARY_SHARE=$2 ;;
        --canary-duration) CANARY_DURATION=$2 ;;
        --canary-events) CANARY_EVENTS=$2 ;;
        --canary-timeout) CANARY_TIMEOUT=$2 ;;
        --version-field) VERSION_FIELD=$2 ;;
        --wait) WAIT=$2 ;;
        --poll) POLL=$2 ;;
        --settle) SETTLE=$2 ;;
        --report-dir) REPORT_DIR=$2 ;;
        --worker) WORKER_COMMAND=$2 ;;
        *) die_usage "unknown option $1" ;;
    esac
    shift 2
done

[ -n "$CONFIG" ] || die_usage "--config (RELEASE_CONFIG) is required"
[ -n "$VERSION" ] || die_usage "--version (RELEASE_VERSION) is required"
[ -n "$HOLDOUT" ] || die_usage "--holdout (RELEASE_HOLDOUT) is required: the evaluation gates need labelled rows"
[ -f "$CONFIG" ] || die_usage "config $CONFIG: no such file"
[ -f "$HOLDOUT" ] || die_usage "holdout $HOLDOUT: no such file"
[ -n "$MIN_AUC$MAX_AUC_DROP$MAX_LABEL_FLIP" ] ||
    die_usage "no evaluation gate: give at least one of --min-auc, --max-auc-drop, --max-label-flip"
number() { [[ $2 =~ ^[0-9]+([.][0-9]+)?$ ]] || die_usage "$1 must be a non-negative number, not '$2'"; }
for pair in "--min-auc=$MIN_AUC" "--max-auc-drop=$MAX_AUC_DROP" "--max-label-flip=$MAX_LABEL_FLIP"; do
    [ -z "${pair#*=}" ] || number "${pair%%=*}" "${pair#*=}"
done
number --canary-share "$CANARY_SHARE"; number --wait "$WAIT"; number --poll "$POLL"; number --settle "$SETTLE"
for pair in "--canary-duration=$CANARY_DURATION" "--canary-events=$CANARY_EVENTS" "--canary-timeout=$CANARY_TIMEOUT"; do
    [[ ${pair#*=} =~ ^[0-9]+$ ]] || die_usage "${pair%%=*} must be a whole number, not '${pair#*=}'"
done
# An empty WORKER_* variable (a CI secret that is not set) would override the config file with '':
# drop it, so that the file's value stands.
for name in $(compgen -e); do
    if [[ $name == WORKER_* ]] && [ -z "${!name}" ]; then unset "$name"; fi
done
read -r -a WORKER <<<"$WORKER_COMMAND"
command -v "${WORKER[0]}" >/dev/null || die_usage "the worker command '${WORKER[0]}' is not found (--worker)"
command -v "$PYTHON" >/dev/null || die_usage "$PYTHON is not found (RELEASE_PYTHON)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/model-release.XXXXXX")
[ -z "$REPORT_DIR" ] || mkdir -p "$REPORT_DIR"
REASON="model-release.sh${GITHUB_RUN_ID:+ (GitHub run ${GITHUB_REPOSITORY:-}#${GITHUB_RUN_ID})}"

# ------------------------------------------------------------------------------------- output

STEP=""
step() { STEP=$1; shift; printf '\n==> [%s] %s\n' "$STEP" "$*"; }
note() { printf '    %s\n' "$*"; }
RESULT=""
fail() {  # fail CODE MESSAGE: report and exit (the EXIT trap ends a canary this script left running)
    local code=$1; shift
    RESULT="FAILED at step ${STEP:-?}: $*"
    printf '\nmodel-release: %s\n' "$RESULT" >&2
    [ "${GITHUB_ACTIONS:-}" != true ] || printf '::error title=model release v%s::%s\n' "$VERSION" "$RESULT"
    exit "$code"
}

w() { "${WORKER[@]}" "$@"; }  # a worker command; the config file is always the same one

# ------------------------------------------------------------------ the control channel's status

# judge MODE: reads $WORK/status.json (`worker models status --json`) and prints one line,
# WORD<TAB>details. Modes:
#   preflight V      ok<TAB>ACTIVE<TAB>REVISION<TAB>REPLICAS | active | canary | noreplicas | refused | behind
#   canary V R       serving<TAB>N | pending<TAB>why | rolledback<TAB>why | changed<TAB>why | noreplicas | refused
#   promoted V P     ok<TAB>N | bad<TAB>why
judge() {
    "$PYTHON" - "$WORK/status.json" "$@" <<'PY'
import json
import sys

path, mode, version, revision = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0
data = json.load(open(path))
d, replicas = data["desired"], data["replicas"]


def describe(s):
    text = f"active v{s['active']}"
    if s.get("canary"):
        text += f", canary v{s['canary']} on {float(s.get('canary_share') or 0):.1%} of keys"
    if s.get("shadow"):
        text += f", shadow v{s['shadow']}"
    return text


def out(*fields):
    print("\t".join(str(f).replace("\t", " ").replace("\n", " ") for f in fields))
    sys.exit(0)


def refused(at):
    bad = [r for r in replicas if r.get("refused") and r["refused"]["revision"] >= at]
    if bad:
        r = bad[0]
        out("refused", f"{len(bad)} replica(s) refused revision {r['refused']['revision']}, e.g. {r['replica']}: "
                       f"v{r['refused']['version']}: {'; '.join(r['refused']['reasons'])}")


if mode == "preflight":
    if not replicas:
        out("noreplicas", "no replica reports on the control channel: nothing would serve a canary")
    refused(d["revision"])
    behind = [r["replica"] for r in replicas if r["revision"] < d["revision"]]
    if behind:
        out("behind", f"{len(behind)} of {len(replicas)} replicas do not serve revision {d['revision']} yet: "
                      f"{', '.join(behind)}")
    if d["active"] == version:
        out("active", f"v{version} is already active (revision {d['revision']}, {describe(d)})")
    if d.get("canary"):
        out("canary", f"a canary is already running: {describe(d)} (revision {d['revision']}, {d.get('command')} "
                      f"by {d.get('issued_by') or '?'}); end it first (worker models canary --off)")
    out("ok", d["active"], d["revision"], len(replicas), describe(d))
elif mode == "canary":
    if d["revision"] != revision or d.get("canary") != version:
        who = f"revision {d['revision']} ({d.get('command')} by {d.get('issued_by') or '?'})"
        if d.get("command") == "canary-rollback":
            out("rolledback", f"{who}: {d.get('reason') or 'no reason given'}; now {describe(d)}")
        out("changed", f"the desired state changed under the canary: {who}: {describe(d)}"
                       + (f"; reason: {d['reason']}" if d.get("reason") else ""))
    if not replicas:
        out("noreplicas", "no replica reports on the control channel any more")
    refused(revision)
    serving = [r for r in replicas if r["revision"] >= revision and r.get("canary") == version]
    gone = [r for r in replicas if r["revision"] >= revision and r.get("canary") != version]
    if gone:
        out("rolledback", f"replica {gone[0]['replica']} no longer serves the canary: {describe(gone[0])}")
    if len(serving) == len(replicas):
        out("serving", len(replicas))
    behind = [r["replica"] for r in replicas if r["revision"] < revision]
    out("pending", f"{len(serving)} of {len(replicas)} replicas serve revision {revision} "
                   f"(behind: {', '.join(behind)})")
elif mode == "promoted":
    if d["active"] != version or d["revision"] < revision:
        out("bad", f"desired state is revision {d['revision']}: {describe(d)}")
    wrong = [r for r in replicas if r["active"] != version or r["revision"] < revision]
    if not replicas or wrong:
        example = f", e.g. {wrong[0]['replica']}: revision {wrong[0]['revision']}, {describe(wrong[0])}" \
            if wrong else ""
        out("bad", f"{len(wrong)} of {len(replicas)} replicas do not serve v{version} at revision {revision}{example}")
    out("ok", len(replicas))
else:
    raise SystemExit(f"unknown mode {mode}")
PY
}

# status: refreshes $WORK/status.json; returns non-zero when the control channel cannot be read.
# (`worker models status` exits 1 when a replica refused the desired revision, and still prints it.)
status() {
    local rc=0
    w models status --json -c "$CONFIG" >"$WORK/status.json.new" 2>"$WORK/status.err" || rc=$?
    if [ "$rc" -gt 1 ] || ! "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1]))' "$WORK/status.json.new" \
        2>/dev/null; then
        note "cannot read the control channel (worker models status exited $rc): $(tail -n 3 "$WORK/status.err")"
        return 1
    fi
    mv "$WORK/status.json.new" "$WORK/status.json"
}

# ----------------------------------------------------------------- counting the canary's events

TAIL_PID=""
COUNTER_PID=""
start_counting() {  # worker tail on the output topic, filtered: how many predictions name $VERSION
    mkfifo "$WORK/predictions"
    "${WORKER[@]}" tail -c "$CONFIG" >"$WORK/predictions" 2>"$WORK/tail.err" &  # not through w(): $! is tail itself
    TAIL_PID=$!
    cat >"$WORK/count.py" <<'PY'
import json
import os
import sys
import threading

path, field, version = sys.argv[1:4]
counts = {"seen": 0, "canary": 0, "without_field": 0}


def dump():
    with open(path + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(path + ".tmp", path)


def every_half_second():
    while True:
        dump()
        threading.Event().wait(0.5)


threading.Thread(target=every_half_second, daemon=True).start()
for line in sys.stdin:
    try:
        record = json.loads(line)
    except ValueError:
        continue
    counts["seen"] += 1
    if not isinstance(record, dict) or field not in record:
        counts["without_field"] += 1
    elif str(record[field]) == version:
        counts["canary"] += 1
dump()
PY
    "$PYTHON" -u "$WORK/count.py" "$WORK/count" "$VERSION_FIELD" "$VERSION" <"$WORK/predictions" &
    COUNTER_PID=$!
    local waited=0
    while ! grep -q '^reading ' "$WORK/tail.err" 2>/dev/null; do  # tail says so once it reads
        kill -0 "$TAIL_PID" 2>/dev/null || fail 1 "worker tail exited: $(tail -n 3 "$WORK/tail.err")"
        [ "$waited" -lt 600 ] || fail 1 "worker tail did not start reading within 60s"
        sleep 0.1; waited=$((waited + 1))
    done
}

stop_counting() {
    local pid
    for pid in $TAIL_PID $COUNTER_PID; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    TAIL_PID=""; COUNTER_PID=""
}

# counted FIELD: seen | canary | without_field
counted() {
    [ -f "$WORK/count" ] || { echo 0; return; }
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/count" "$1" 2>/dev/null ||
        echo 0
}

# ---------------------------------------------------------------------------- cleaning up

CANARY_REVISION=""  # set once this script's canary is written; cleared when it is promoted or gone
finish() {
    local rc=$?
    trap - EXIT INT TERM
    stop_counting
    # ... only while the desired state is still that canary: not after a rollback or someone else's command
    if [ -n "$CANARY_REVISION" ] && status &&
        [[ $(judge canary "$VERSION" "$CANARY_REVISION") =~ ^(serving|pending|refused|noreplicas) ]]; then
        echo "ending the canary of v$VERSION (revision $CANARY_REVISION): the release did not complete" >&2
        w models canary --off --wait "$WAIT" --reason "$REASON: release stopped (${RESULT:-exit $rc})" -c "$CONFIG" \
            >&2 || echo "could not end the canary: end it with 'worker models canary --off'" >&2
    fi
    if [ -n "$REPORT_DIR" ] && [ -f "$WORK/status.json" ]; then cp "$WORK/status.json" "$REPORT_DIR/status.json"; fi
    rm -rf "$WORK"
    [ "$rc" -ne 0 ] || RESULT=${RESULT:-"v$VERSION released"}
    [ -n "$RESULT" ] || RESULT="FAILED at step ${STEP:-?} (exit $rc)"
    if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
        printf '### Model release v%s\n\n%s (exit code %d)\n' "$VERSION" "$RESULT" "$rc" >>"$GITHUB_STEP_SUMMARY"
    fi
    exit "$rc"
}
trap finish EXIT
trap 'RESULT="interrupted at step ${STEP:-?}"; exit 130' INT TERM

# =============================================================================== the release

step 0/4 "what serves now (worker models status, $CONFIG)"
status || fail 1 "cannot read the control channel"
verdict=$(judge preflight "$VERSION") || fail 1 "cannot judge the status (see above)"
IFS=$'\t' read -r word active revision replicas describe <<<"$verdict"
case $word in
    ok) note "revision $revision: $describe; $replicas replica(s) report" ;;
    active) note "$active"; RESULT="v$VERSION is already active: nothing to release"; echo "$RESULT"; exit 0 ;;
    *) fail 13 "$active" ;;
esac
SERVING=$active

step 1/4 "validate v$VERSION (load, signature, golden vectors, batch sizes)"
rc=0; w models validate "$VERSION" -c "$CONFIG" || rc=$?
case $rc in
    0) ;;
    2) fail 2 "the configuration is invalid (worker models validate exited 2)" ;;
    *) fail 10 "v$VERSION is not servable (worker models validate exited $rc)" ;;
esac

step 2/4 "evaluate v$VERSION against the serving v$SERVING on $HOLDOUT"
args=(models evaluate "$VERSION" -c "$CONFIG" --input "$HOLDOUT" --against "$SERVING")
[ -z "$LABEL_FIELD" ] || args+=(--label-field "$LABEL_FIELD")
[ -z "$MIN_AUC" ] || args+=(--min-auc "$MIN_AUC")
[ -z "$MAX_AUC_DROP" ] || args+=(--max-auc-drop "$MAX_AUC_DROP")
[ -z "$MAX_LABEL_FLIP" ] || args+=(--max-label-flip "$MAX_LABEL_FLIP")
[ -z "$REPORT_DIR" ] || ! "$PYTHON" -c 'import matplotlib' 2>/dev/null || args+=(--plot "$REPORT_DIR/evaluate.png")
rc=0; w "${args[@]}" | tee "$WORK/evaluate.txt" || rc=$?
[ -z "$REPORT_DIR" ] || cp "$WORK/evaluate.txt" "$REPORT_DIR/evaluate.txt"
if [ "$rc" -ne 0 ]; then
    failed=$(sed -n 's/^[[:space:]]*FAIL[[:space:]]*//p' "$WORK/evaluate.txt" |
        awk 'NR > 1 { printf "; " } { printf "%s", $0 }')
    [ -z "$failed" ] || fail 11 "v$VERSION failed its evaluation gate(s): $failed"
    [ "$rc" -ne 2 ] || fail 2 "the configuration is invalid (worker models evaluate exited 2)"
    fail 12 "the evaluation did not run (worker models evaluate exited $rc)"
fi

if [ "$DRY_RUN" = 1 ]; then
    RESULT="dry run: v$VERSION passed validation and evaluation; no canary started"; echo "$RESULT"; exit 0
fi

step 3/4 "canary v$VERSION on $CANARY_SHARE of keys: at least ${CANARY_DURATION}s on every replica and" \
    "$CANARY_EVENTS predictions, within ${CANARY_TIMEOUT}s"
[ "$CANARY_EVENTS" -eq 0 ] || start_counting
rc=0; w models canary "$VERSION" --share "$CANARY_SHARE" --wait "$WAIT" --reason "$REASON" -c "$CONFIG" \
    | tee "$WORK/canary.txt" || rc=$?
CANARY_REVISION=$(sed -n 's/^revision \([0-9][0-9]*\) (canary):.*/\1/p' "$WORK/canary.txt" | head -n 1)
if [ "$rc" -ne 0 ]; then
    [ -n "$CANARY_REVISION" ] || fail 13 "the canary was not written (worker models canary exited $rc)"
    fail 13 "not every replica applied the canary (revision $CANARY_REVISION) within ${WAIT}s, or one refused it"
fi
[ -n "$CANARY_REVISION" ] || fail 1 "cannot tell the canary's revision from: $(cat "$WORK/canary.txt")"

started=$(date +%s); serving_since=""; unreadable=0; last_line=""
while true; do
    now=$(date +%s)
    if ! status; then
        unreadable=$((unreadable + 1))
        [ "$unreadable" -lt 5 ] || fail 1 "the control channel could not be read 5 times in a row"
        sleep "$POLL"; continue
    fi
    unreadable=0
    verdict=$(judge canary "$VERSION" "$CANARY_REVISION") || fail 1 "cannot judge the status (see above)"
    IFS=$'\t' read -r word detail <<<"$verdict"
    case $word in
        serving) serving_since=${serving_since:-$now} ;;
        pending) serving_since="" ;;
        rolledback) CANARY_REVISION=""; fail 14 "the canary of v$VERSION was rolled back: $detail" ;;
        changed) CANARY_REVISION=""; fail 14 "$detail" ;;
        *) fail 14 "$detail" ;;
    esac
    events=0
    if [ "$CANARY_EVENTS" -gt 0 ]; then
        kill -0 "$TAIL_PID" 2>/dev/null || fail 1 "worker tail stopped: $(tail -n 3 "$WORK/tail.err")"
        events=$(counted canary)
        seen=$(counted seen)
        if [ "$seen" -ge 100 ] && [ "$(counted without_field)" -eq "$seen" ]; then
            fail 2 "the predictions have no field '$VERSION_FIELD': map \$model_version to an output field" \
                "(output.fields) and name it with --version-field"
        fi
    fi
    held=$(( serving_since ? now - serving_since : 0 ))
    line="canary v$VERSION: $( [ "$word" = serving ] && echo "every replica ($detail) serves it" || echo "$detail" ),"
    line+=" ${held}s/${CANARY_DURATION}s, $events/$CANARY_EVENTS predictions"
    [ "$CANARY_EVENTS" -eq 0 ] || line+=" (of $seen read)"
    [ "$line" = "$last_line" ] || note "$line"
    last_line=$line
    if [ "$word" = serving ] && [ "$held" -ge "$CANARY_DURATION" ] && [ "$events" -ge "$CANARY_EVENTS" ]; then
        break
    fi
    if [ $((now - started)) -ge "$CANARY_TIMEOUT" ]; then
        why="not enough traffic to judge it"
        [ "$word" = serving ] || why="not every replica served it: $detail"
        fail 15 "the canary did not hold ${CANARY_DURATION}s on every replica with $CANARY_EVENTS predictions within" \
            "${CANARY_TIMEOUT}s (${held}s, $events predictions): $why"
    fi
    sleep "$POLL"
done
stop_counting
sleep "$SETTLE"  # a breach in the last batches counted: its rollback is on its way to the control channel
status || fail 1 "cannot read the control channel"
verdict=$(judge canary "$VERSION" "$CANARY_REVISION") || fail 1 "cannot judge the status (see above)"
IFS=$'\t' read -r word detail <<<"$verdict"
case $word in
    serving) note "held: ${held}s on every replica, $events predictions, not rolled back" ;;
    rolledback|changed) CANARY_REVISION=""; fail 14 "the canary of v$VERSION was rolled back at the end: $detail" ;;
    *) fail 14 "$detail" ;;
esac

step 4/4 "promote v$VERSION"
rc=0; w models promote "$VERSION" --wait "$WAIT" --reason "$REASON: canary held ${held}s, $events predictions" \
    -c "$CONFIG" | tee "$WORK/promote.txt" || rc=$?
promoted=$(sed -n 's/^revision \([0-9][0-9]*\) (promote):.*/\1/p' "$WORK/promote.txt" | head -n 1)
[ -n "$promoted" ] || fail 16 "the promotion was not written (worker models promote exited $rc)"
canary_revision=$CANARY_REVISION
CANARY_REVISION=""  # promoted: not a canary to end any more
if [ "$promoted" -ne $((canary_revision + 1)) ]; then
    # Something (the canary guard, most likely) wrote between the last check and the promotion, which
    # then applied to that newer state: undo the promotion rather than leave an unjudged version active.
    note "revision $promoted, not $((canary_revision + 1)): the desired state changed just before the promotion"
    w models rollback --wait "$WAIT" --reason "$REASON: undo a promotion racing a change of the canary" \
        -c "$CONFIG" || true
    fail 16 "the desired state changed between the last canary check and the promotion (see worker models status);" \
        "the promotion was rolled back"
fi
[ "$rc" -eq 0 ] || fail 16 "not every replica applied the promotion (revision $promoted) within ${WAIT}s, or" \
    "one refused it: see worker models status, and worker models rollback to return to v$SERVING"
status || fail 1 "cannot read the control channel"
verdict=$(judge promoted "$VERSION" "$promoted") || fail 1 "cannot judge the status (see above)"
IFS=$'\t' read -r word detail <<<"$verdict"
[ "$word" = ok ] || fail 16 "$detail"
RESULT="v$VERSION released: active on all $detail replica(s) (revision $promoted), replacing v$SERVING"
printf '\n%s\n' "$RESULT"
