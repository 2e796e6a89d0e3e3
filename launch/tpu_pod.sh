#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), install this checkout on
# every worker, and run the same `a3-train --flagfile=...` on all of them.
#
#   launch/tpu_pod.sh --name=a3-v5p --zone=us-east5-a --accelerator_type=v5p-64 \
#       --flagfile=experiments/paper/llama3.2-1b_v5p.flags [--project=P] [--version=V]
#       [--spot] [--detach] [--dry_run] [-- more a3-train flags]
#
# --version defaults to the TPU generation's JAX image (v4 and older:
# tpu-ubuntu2204-base; v5e: v2-alpha-tpuv5-lite; v5p: v2-alpha-tpuv5; v6e:
# v2-alpha-tpuv6e). Workers get ~/a3-venv (Python 3.12 through uv). --detach
# leaves a3-train running under nohup (log: ~/a3-train.log on each worker)
# instead of holding the ssh session.
# --dry_run prints every command instead of running it; the slice is created only
# when `describe` finds none. No worker needs coordinates: jax.distributed reads
# the slice's workers from the VM metadata (a3_jax/distributed.py). The flag
# file's --workdir should be a gs:// path, which every worker can write.
# Every worker gets the flag file and every flag file it includes (--flagfile=
# lines, recursively; paths relative to this directory, as a3-train reads them),
# and a3_jax with its gs:// extra (gcsfs).
set -euo pipefail

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "tpu_pod.sh: error: $*" >&2; exit 2; }

quote() {  # words -> one line that sh and Python's shlex.split read back as the same words
  local out=() w
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

run() {  # prints the command; runs it unless --dry_run
  quote "$@"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

NAME= ZONE= ACCEL= FLAGFILE= PROJECT= VERSION= SPOT=0 DETACH=0 DRY_RUN=0 EXTRA=()
while (($#)); do
  case $1 in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator_type=*) ACCEL=${1#*=} ;;
    --flagfile=*) FLAGFILE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --version=*) VERSION=${1#*=} ;;
    --spot) SPOT=1 ;;
    --detach) DETACH=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage ;;
    *) die "unknown argument $1 (a3-train flags go after --)" ;;
  esac
  shift
done
[[ -n $NAME && -n $ZONE && -n $ACCEL && -n $FLAGFILE ]] ||
  die "--name, --zone, --accelerator_type and --flagfile are required"
[[ -f $FLAGFILE ]] || die "--flagfile=$FLAGFILE: no such file"

INCLUDED=()  # the flag files FLAGFILE includes, recursively, as they are written
include() {  # adds the flag files that flag file $1 includes
  local inc
  while IFS= read -r inc; do
    [[ $inc != /* ]] || die "$1 includes $inc: name it relative to this directory (the" \
                            "workers recreate it relative to their home)"
    [[ -f $inc ]] || die "$1 includes $inc: no such file (paths are relative to this directory)"
    [[ " ${INCLUDED[*]-} " == *" $inc "* ]] && continue
    INCLUDED+=("$inc")
    include "$inc"
  done < <(sed -n 's/^--\{0,1\}flagfile=//p' "$1")  # absl's own rule: at line start
}
include "$FLAGFILE"
if [[ -z $VERSION ]]; then
  case $ACCEL in
    v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "--accelerator_type=$ACCEL: unknown generation; pass --version" ;;
  esac
fi
if ! grep -Eq -- '^--workdir=gs://' "$FLAGFILE" && [[ " ${EXTRA[*]} " != *" --workdir=gs://"* ]]; then
  echo "tpu_pod.sh: warning: the workdir is not a gs:// path; the workers of a" \
       "multi-host slice must share it" >&2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
PACKAGE_VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
WHEEL_DIR=${TMPDIR:-/tmp}/a3_jax-wheel
WHEEL=a3_jax-$PACKAGE_VERSION-py3-none-any.whl
FLAGS_NAME=$(basename "$FLAGFILE")
VENV=a3-venv
WHERE=(--zone="$ZONE")
if [[ -n $PROJECT ]]; then WHERE+=(--project="$PROJECT"); fi
CREATE=(gcloud compute tpus tpu-vm create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL"
        --version="$VERSION")
if ((SPOT)); then CREATE+=(--spot); fi

echo "# 1. reuse slice $NAME if it exists (READY), else create it"
quote gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)'
if ((DRY_RUN)); then
  quote "${CREATE[@]}"
else
  STATE=$(gcloud compute tpus tpu-vm describe "$NAME" "${WHERE[@]}" --format='value(state)' \
          2>/dev/null || true)
  if [[ -z $STATE ]]; then
    run "${CREATE[@]}"
  elif [[ $STATE != READY ]]; then
    die "slice $NAME exists but is $STATE; delete it or wait until it is READY"
  fi
fi

echo "# 2. build this checkout as a wheel and pack the flag files; install both on every"
echo "#    worker: a3_jax[gcs] (gs:// workdirs and data) with jax[tpu] in ~/$VENV"
# jax needs Python >= 3.11, newer than the TPU images' python3: uv brings its own.
FLAGS_TAR=a3-flags.tgz
run rm -rf "$WHEEL_DIR"
run python3 -m pip wheel --quiet --no-deps --wheel-dir "$WHEEL_DIR" "$REPO"
TAR=(tar -czf "$WHEEL_DIR/$FLAGS_TAR" -C "$(dirname "$FLAGFILE")" "$FLAGS_NAME")
if ((${#INCLUDED[@]})); then TAR+=(-C "$PWD" "${INCLUDED[@]}"); fi
run "${TAR[@]}"
run gcloud compute tpus tpu-vm scp "$WHEEL_DIR/$WHEEL" "$WHEEL_DIR/$FLAGS_TAR" "$NAME:" \
    --worker=all "${WHERE[@]}"
UV='$HOME/.local/bin/uv'
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${WHERE[@]}" --command="\
tar -xzf $FLAGS_TAR && \
python3 -m pip install --quiet --user uv && \
{ [ -x $VENV/bin/python ] || $UV venv --quiet --python 3.12 $VENV; } && \
$UV pip install --quiet --python $VENV/bin/python 'jax[tpu]' './$WHEEL[gcs]' \
--reinstall-package a3-jax"

echo "# 3. run a3-train on every worker"
TRAIN="$VENV/bin/a3-train --flagfile=$FLAGS_NAME"
if ((${#EXTRA[@]})); then TRAIN+=" $(quote "${EXTRA[@]}")"; fi
if ((DETACH)); then TRAIN="nohup $TRAIN > a3-train.log 2>&1 < /dev/null &"; fi
run gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${WHERE[@]}" --command="$TRAIN"
