#!/usr/bin/env bash
# All ten SUPERB tasks for one upstream, through `pruned-upstream superb` (s3prl's
# own runner with our `pruned_wavlm_local` upstream), then `pruned-upstream score`.
#
#   scripts/run_superb.sh UPSTREAM_CKPT OUT_DIR [TASK ...]     (default: all ten)
#
# Each task is resumable and skipped when its result exists; a task whose data
# variables are unset is skipped with their names, the others still run. Usage,
# variables and the scoring steps: scripts/README.md. Task facts (downstream,
# config, best checkpoint, test split) mirror pruned_upstream/s3prl_plugin/tasks.py;
# tests/test_run_superb_script.py checks them against it.
set -euo pipefail

ALL_TASKS=(PR KS IC SID ER ASR QbE SF ASV SD)
declare -A DOWNSTREAM=([PR]=ctc [KS]=speech_commands [IC]=fluent_commands [SID]=voxceleb1
    [ER]=emotion [ASR]=asr [QbE]=quesst14_dtw [SF]=ctc [ASV]=sv_voxceleb1 [SD]=diarization)
declare -A CONFIG=([PR]=pr.yaml [KS]=ks.yaml [IC]=ic.yaml [SID]=sid.yaml [ER]=er.yaml
    [ASR]=asr.yaml [QbE]=qbe.yaml [SF]=sf.yaml [ASV]=asv.yaml [SD]=sd.yaml)
# The checkpoint s3prl's expert saves as best on dev (its log_records); tested on TEST_SPLIT.
declare -A BEST_CKPT=([PR]=dev-best.ckpt [KS]=dev-best.ckpt [IC]=dev-best.ckpt [SID]=dev-best.ckpt
    [ER]=dev-best.ckpt [ASR]=dev-clean-best.ckpt [SF]=dev-best.ckpt [SD]=best-states-dev.ckpt)
declare -A TEST_SPLIT=([PR]=test [KS]=test [IC]=test [SID]=test [ER]=test [ASR]=test-clean
    [QbE]=test [SF]=test [ASV]=test [SD]=test)
# The ${VAR}s of downstream_configs/<task>.yaml, plus what the extra scoring step needs.
declare -A DATA_VARS=([PR]=LIBRISPEECH_ROOT [KS]="SPEECH_COMMANDS_ROOT SPEECH_COMMANDS_TEST_ROOT"
    [IC]=FLUENT_COMMANDS_ROOT [SID]=VOXCELEB1_ROOT [ER]=IEMOCAP_ROOT
    [ASR]="LIBRISPEECH_ROOT LIBRISPEECH_BUCKET_DIR" [QbE]=QUESST14_ROOT [SF]=SNIPS_ROOT
    [ASV]=VOXCELEB1_ROOT [SD]="LIBRI2MIX_SD_DATA DSCORE_ROOT")
# IEMOCAP sessions, each the test set once (s3prl superb.md); ER_FOLDS="fold1" runs fewer (a demo's reduced protocol)
read -r -a ER_FOLDS <<< "${ER_FOLDS:-fold1 fold2 fold3 fold4 fold5}"
UPSTREAM=pruned_wavlm_local

die() { echo "run_superb.sh: $*" >&2; exit 2; }
note() { echo "[run_superb] $*"; }

# ------------------------------------------------------------ running commands
# DRY_RUN=1 prints each command ("+ cmd args", quoted for bash) instead of running it.
show() {
    local word out="+"
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./=,:@%+-]+$ ]]; then out+=" $word"; else out+=" $(printf '%q' "$word")"; fi
    done
    printf '%s' "$out"
}

run() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then show "$@"; echo; return 0; fi
    "$@"
}

# run_to FILE CMD...: CMD's standard output into FILE, written only when CMD succeeds.
run_to() {
    local file=$1; shift
    if [[ ${DRY_RUN:-0} == 1 ]]; then show "$@"; printf ' > %q\n' "$file"; return 0; fi
    "$@" > "$file.tmp"
    mv "$file.tmp" "$file"
}

cli() { run "${CLI[@]}" "$@"; }

# ------------------------------------------------------------------ overrides
# s3prl (utility/helper.py, override) splits -o on ',,' and on every '=', then eval()s each value: a
# value we build is written as a Python string literal whose ASCII outside [A-Za-z0-9/._+:@%~-] are
# \xHH escapes (no ',', '=', quote or backslash left), so that it stays one string whatever it holds.
# The bash twin of pruned_upstream/s3prl_plugin/override_quoting.py's s3prl_literal (one per language).
# Bytes >= 0x80 are copied: main refuses an OUT_DIR that is not valid UTF-8.
s3prl_str() {
    local LC_ALL=C value=$1 out="'" char code i
    for (( i = 0; i < ${#value}; i++ )); do
        char=${value:i:1}
        case $char in
            [A-Za-z0-9/._+:@%~-]) out+=$char ;;
            *) printf -v code '%d' "'$char"
               if (( code < 0 || code >= 128 )); then out+=$char; else printf -v char '\\x%02x' "$code"; out+=$char; fi ;;
        esac
    done
    printf '%s' "$out'"
}

join_overrides() {  # s3prl's -o syntax: key=value,,key=value (empty items dropped)
    local out="" item
    for item in "$@"; do [[ -n $item ]] && out+="${out:+,,}$item"; done
    printf '%s' "$out"
}

eval_override() {  # SUPERB_OVERRIDE and SUPERB_OVERRIDE_<TASK>: every run of the task
    local per="SUPERB_OVERRIDE_$1"
    join_overrides "${SUPERB_OVERRIDE:-}" "${!per:-}"
}

train_override() {  # STEPS_OVERRIDE=N: a smoke run of N steps that still evaluates dev and saves
    local steps=""
    [[ -n ${STEPS_OVERRIDE:-} ]] && steps="config.runner.total_steps=$STEPS_OVERRIDE,,config.runner.eval_step=$STEPS_OVERRIDE,,config.runner.save_step=$STEPS_OVERRIDE"
    join_overrides "$steps" "$(eval_override "$1")" "${2:-}"
}

set_o() { O=(); [[ -z $1 ]] || O=(-o "$1"); }  # O: the words "-o X", or none for an empty X

# ------------------------------------------------------------ result checks
# Lines pruned_upstream/superb/results.py reads. KS/IC/SID/ER need the
# `test at step 0` line of an explicit `-m evaluate` of the best checkpoint.
has_line() { [[ -f $1 ]] && grep -Eq "$2" "$1"; }

ckpts_by_step() {  # EXPDIR's states-N.ckpt, in increasing N
    local ckpt step
    for ckpt in "$1"/states-*.ckpt; do
        [[ -f $ckpt ]] || continue
        step=${ckpt##*/states-}; echo "${step%.ckpt} $ckpt"
    done | sort -n | cut -d' ' -f2-
}

# Lists of paths pass one per line and are read with `read -r` / mapfile, never word-split: an
# OUT_DIR holding a space or a glob character (exp[1] would match exp1) stays one literal path.
last_complete() {  # EXPDIR's newest states-N.ckpt that is complete (a kill while s3prl saved cuts one short)
    local ckpt
    while IFS= read -r ckpt; do
        if [[ ${DRY_RUN:-0} == 1 ]] || "$PYTHON" -c \
            'import sys, zipfile; sys.exit(0 if zipfile.is_zipfile(sys.argv[1]) else 1)' "$ckpt"; then
            echo "$ckpt"; return 0
        fi
        note "skipping $ckpt: incomplete (cut short while saving)" >&2
    done < <(ckpts_by_step "$1" | tac)
}

asv_ckpts() {  # the checkpoints s3prl's sv_voxceleb1/test_expdir.sh tests: states-N, N a multiple of
    # 20000 (its list: 20000 .. 200000); a shorter run with none of those: every states-N
    local all=() ckpt chosen=()
    mapfile -t all < <(ckpts_by_step "$1")
    for ckpt in "${all[@]}"; do
        ckpt=${ckpt##*/states-}; (( ${ckpt%.ckpt} % 20000 == 0 )) && chosen+=("$1/states-$ckpt")
    done
    (( ${#chosen[@]} > 0 )) || chosen=("${all[@]}")
    (( ${#chosen[@]} == 0 )) || printf '%s\n' "${chosen[@]}"
}

asv_pending() {  # the checkpoints of asv_ckpts whose states-N/log.txt has no test EER
    local ckpt  # ASV_TEST="states-N ...": only these (none: train only); superb-all --jobs' ASV units
    while IFS= read -r ckpt; do
        [[ -z ${ASV_TEST:-} || " $ASV_TEST " == *" $(basename -- "${ckpt%.ckpt}") "* ]] || continue
        has_line "${ckpt%.ckpt}/log.txt" 'sv-voxceleb1/test-EER: ' || printf '%s\n' "$ckpt"
    done < <(asv_ckpts "$1")
}

expdir_done() {  # TASK EXPDIR: does EXPDIR hold the metric the score reads?
    local task=$1 dir=$2
    [[ -f $dir/superb_result.json ]] && return 0
    case $task in
        KS|IC|SID|ER) has_line "$dir/log.log" '^test at step 0: [^[:space:]]+$' ;;
        PR) has_line "$dir/stdout.log" '^test per: ' ;;
        ASR) has_line "$dir/stdout.log" '^test-clean wer: ' && { [[ -z ${ASR_KENLM_MODEL:-} ]] \
                || [[ -f $dir/test-clean-LM-hyp.ark ]]; } ;;  # with an LM: its test too (test_asr_lm)
        SF) has_line "$dir/stdout.log" '^test slot_type_f1: ' && has_line "$dir/stdout.log" '^test slot_value_cer: ' ;;
        QbE) has_line "$dir/score_twv.log" 'actTWV:.*maxTWV:' || has_line "$dir/score_twv_ours.log" 'actTWV:.*maxTWV:' ;;
        ASV) [[ -f $dir/train.done ]] && [[ -z $(asv_pending "$dir") ]] \
                && ls "$dir"/states-*/log.txt >/dev/null 2>&1 ;;
        SD) [[ -f $dir/scoring/sd_score.done ]] ;;  # every grid point scored (sd_score)
    esac
}

expdirs_of() {  # every expdir of TASK (ER: one per fold; QbE: dev and test per layer)
    local fold layer split
    case $1 in
        ER) for fold in "${ER_FOLDS[@]}"; do echo "$OUT/ER_$fold"; done ;;
        QbE) for layer in $QBE_LAYER_LIST; do for split in dev test; do
                echo "$OUT/QbE_${split}_layer$layer"; done; done ;;
        *) echo "$OUT/$1" ;;
    esac
}

task_done() {
    local dir
    while IFS= read -r dir; do expdir_done "$1" "$dir" || return 1; done < <(expdirs_of "$1")
}

missing_vars() {  # the data variables of TASK that are unset (DSCORE_ROOT: neither dscore nor a .tar.gz of it)
    local var missing=()
    for var in ${DATA_VARS[$1]}; do
        if [[ -z ${!var:-} ]]; then missing+=("$var")
        elif [[ $var == DSCORE_ROOT && ! -f ${!var}/score.py && ! ( -f ${!var} && ${!var} =~ \.(tar\.gz|tgz)$ ) ]]; then
            missing+=("DSCORE_ROOT (neither score.py in ${!var} nor a .tar.gz)")
        fi
    done
    echo "${missing[*]}"
}

# ------------------------------------------------------------ train and test
train() {  # TASK EXPDIR [extra override]: fresh, resumed from the last states-N.ckpt, or done
    local task=$1 dir=$2 last override
    override=$(train_override "$task" "${3:-}")
    if [[ -f $dir/train.done ]]; then note "$task: training of $dir already done"; return 0; fi
    last=$(last_complete "$dir")
    set_o "$override"
    if [[ -n $last ]]; then
        note "$task: resuming $dir from $last"
        cli superb -m train -e "$last" "${O[@]}"
    else
        cli superb -m train -u "$UPSTREAM" -k "$CKPT" -d "${DOWNSTREAM[$task]}" \
            -c "$CONFIGS/${CONFIG[$task]}" -p "$dir" "${O[@]}" ${SUPERB_SEED:+--seed "$SUPERB_SEED"}
    fi
    [[ ${DRY_RUN:-0} == 1 ]] || touch "$dir/train.done"
}

test_best() {  # TASK EXPDIR [override]: -m evaluate the dev-picked checkpoint on the test split
    local task=$1 dir=$2 ckpt=$2/${BEST_CKPT[$1]} last
    if [[ ${DRY_RUN:-0} != 1 && ! -f $ckpt ]]; then
        # s3prl saves it only when dev beats the expert's initial best (e.g. accuracy > 0),
        # which a real run always does; a smoke run may not.
        last=$(last_complete "$dir")
        [[ -n $last ]] || { echo "$task: neither $ckpt nor a complete states-N.ckpt in $dir" >&2; return 1; }
        note "$task: WARNING: no ${BEST_CKPT[$task]} (dev never improved on the expert's initial best); testing $last"
        ckpt=$last
    fi
    set_o "$(join_overrides "${3:-}" "$(eval_override "$task")")"
    cli superb -m evaluate -e "$ckpt" -t "${TEST_SPLIT[$task]}" "${O[@]}"
}

# ASR with a language model (s3prl superb.md "Testing with KenLM"): ASR_KENLM_MODEL (an ARPA or KenLM
# binary file; LibriSpeech's 4-gram.arpa.gz for real data) and ASR_LEXICON (fairseq's
# librispeech_lexicon.lst layout) decode the same checkpoint again through flashlight-text. Its expdir is
# EXPDIR/LM, so that EXPDIR/stdout.log's last `test-clean wer:` stays the no-LM score SUPERB ranks; its
# hypotheses are copied up to EXPDIR/test-clean-LM-hyp.ark, where s3prl's submit.py takes asr_with_lm from.
test_asr_lm() {  # EXPDIR
    local dir=$1 lm=$1/LM var path
    for var in ASR_KENLM_MODEL ASR_LEXICON; do
        path=${!var:-}
        [[ -n $path && -f $path ]] || { echo "ASR: $var='$path' is not a file (both ASR_KENLM_MODEL and ASR_LEXICON are needed)" >&2; return 1; }
        "$PYTHON" -c 'import os, sys; os.fsencode(sys.argv[1]).decode("utf-8")' "$path" 2>/dev/null \
            || { echo "ASR: $var is not valid UTF-8 text" >&2; return 1; }
    done
    local args=config.downstream_expert.datarc.decoder_args
    # unk_weight: s3prl's expert.py eval()s the config's string '-math.inf' where math is not imported (a
    # NameError); -o's own eval (utility/helper.py imports math) makes it a float first
    test_best ASR "$dir" "$(join_overrides "args.expdir=$(s3prl_str "$lm")" "$args.decoder_type='kenlm'" \
        "$args.kenlm_model=$(s3prl_str "$(realpath -- "$ASR_KENLM_MODEL")")" \
        "$args.lexicon=$(s3prl_str "$(realpath -- "$ASR_LEXICON")")" "$args.unk_weight=-math.inf")"
    run cp -- "$lm/test-clean-LM-hyp.ark" "$dir/test-clean-LM-hyp.ark"
}

run_asr() {
    local dir=$OUT/ASR
    if ! has_line "$dir/stdout.log" '^test-clean wer: ' && [[ ! -f $dir/superb_result.json ]]; then
        train ASR "$dir"
        test_best ASR "$dir"
    fi
    [[ -z ${ASR_KENLM_MODEL:-} ]] || test_asr_lm "$dir"
}

run_standard() {  # PR KS IC SID ASR SF, and each ER fold
    local task=$1 dir=$2
    expdir_done "$task" "$dir" && { note "$task: $dir has its result"; return 0; }
    train "$task" "$dir" "${3:-}"
    test_best "$task" "$dir"
}

run_er() {
    local fold
    for fold in "${ER_FOLDS[@]}"; do
        run_standard ER "$OUT/ER_$fold" "config.downstream_expert.datarc.test_fold=$(s3prl_str "$fold")"
    done
}

run_asv() {  # s3prl's sv_voxceleb1/test_expdir.sh, through our runner: every checkpoint, best EER
    local dir=$OUT/ASV ckpt state pending=() log eer
    train ASV "$dir"
    mapfile -t pending < <(asv_pending "$dir")
    [[ ${DRY_RUN:-0} == 1 && ${#pending[@]} == 0 ]] && pending=("$dir/states-N.ckpt")  # not trained yet
    for ckpt in "${pending[@]}"; do
        state=${ckpt%.ckpt}
        [[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$state"
        set_o "$(join_overrides "args.expdir=$(s3prl_str "$state")" "$(eval_override ASV)")"
        run_to "$state/log.txt" "${CLI[@]}" superb -m evaluate -e "$ckpt" -t "${TEST_SPLIT[ASV]}" "${O[@]}"
    done
    [[ ${DRY_RUN:-0} == 1 ]] && return 0
    for log in "$dir"/states-*/log.txt; do  # "EER PATH" per log (a ':' in OUT_DIR would cut grep -H's fields)
        [[ -f $log ]] && eer=$(grep -m1 -o 'sv-voxceleb1/test-EER: [^[:space:]]*' "$log") \
            && printf '%s %s\n' "${eer##* }" "$log"
    done | sort -g -k1,1 | { read -r eer log && echo "[run_superb] ASV: lowest EER: $log:sv-voxceleb1/test-EER: $eer"; } \
        || true
}

sd_score() {  # EXPDIR: s3prl's diarization/score.sh grid (make_rttm.py + dscore, both unchanged), lowest DER
    # score.sh itself cannot run unchanged (it hard-codes its author's dscore path): docs/tasks/sd.md
    cli superb-step sd-score "$1" "$LIBRI2MIX_SD_DATA/test"
    [[ ${DRY_RUN:-0} == 1 ]] || touch "$1/scoring/sd_score.done"
}

run_sd() {
    local dir=$OUT/SD
    if [[ ! -f $dir/test.done ]]; then  # the test pass writes scoring/predictions/*.h5
        train SD "$dir"
        test_best SD "$dir"
        [[ ${DRY_RUN:-0} == 1 ]] || touch "$dir/test.done"
    fi
    sd_score "$dir"
}

count_layers() {  # hidden states our upstream returns for CKPT (s3prl's -l indexes them from 0)
    "$PYTHON" - "$CKPT" <<'EOF'
import sys
import torch
from pruned_upstream.s3prl_plugin.expert import UpstreamExpert
with torch.no_grad():
    print(len(UpstreamExpert(sys.argv[1]).eval()([torch.zeros(16000)])["hidden_states"]))
EOF
}

run_qbe() {  # no training: DTW per layer on dev and test, then QUESST14's TWV scoring
    local layer split dir truth
    set_o "$(eval_override QbE)"
    for layer in $QBE_LAYER_LIST; do
        for split in dev test; do
            dir=$OUT/QbE_${split}_layer$layer
            expdir_done QbE "$dir" && continue
            if [[ ! -f $dir/benchmark.stdlist.xml ]]; then
                cli superb -m evaluate -u "$UPSTREAM" -k "$CKPT" -d quesst14_dtw -c "$CONFIGS/qbe.yaml" \
                    -l "$layer" -t "$split" -p "$dir" "${O[@]}"
            fi
            truth=groundtruth_quesst14_dev; [[ $split == test ]] && truth=groundtruth_quesst14_eval
            if [[ -f $QUESST14_ROOT/scoring/score-TWV-Cnxe.sh ]] && command -v java >/dev/null; then
                # s3prl superb.md "QbE / Scoring": run from the scoring directory, last argument -10.
                run_to "$dir/score_twv.log" env -C "$QUESST14_ROOT/scoring" bash score-TWV-Cnxe.sh "$dir" "$truth" -10
            else  # no official scorer (small data, or no java): ours, marked as ours (docs/tasks/qbe.md)
                cli superb-step mtwv "$dir" "$QUESST14_ROOT/scoring/$truth" -10
            fi
        done
    done
}

run_task() {
    case $1 in
        ER) run_er ;;
        QbE) run_qbe ;;
        ASV) run_asv ;;
        SD) run_sd ;;
        ASR) run_asr ;;
        *) run_standard "$1" "$OUT/$1" ;;
    esac
}

# ------------------------------------------------------------------ scoring
score_all() {  # TASK...: score these complete tasks (a partial one, e.g. 3 of 5 ER folds, is left out)
    local view=$OUT/scored/$MODEL_NAME task dir
    if (( $# == 0 )); then note "no task has a result yet: nothing to score"; return 0; fi
    note "scoring ${*} in $view"
    if [[ ${DRY_RUN:-0} != 1 ]]; then
        rm -rf "$OUT/scored"; mkdir -p "$view"
        for task in "$@"; do  # relative links: OUT_DIR may be moved
            while IFS= read -r dir; do ln -s "../../${dir##*/}" "$view/${dir##*/}"; done < <(expdirs_of "$task")
        done
    fi
    cli score "$view" --allow-missing
    run_to "$OUT/superb_score.json" "${CLI[@]}" score "$view" --allow-missing --json
}

# --------------------------------------------------------------------- main
find_cli() {
    local here=$1
    if [[ -n ${PRUNED_UPSTREAM:-} ]]; then read -r -a CLI <<< "$PRUNED_UPSTREAM"
    elif command -v pruned-upstream >/dev/null; then CLI=(pruned-upstream)
    elif [[ -x $here/../.venv/bin/pruned-upstream ]]; then CLI=("$(realpath "$here/../.venv/bin/pruned-upstream")")
    else die "no pruned-upstream on PATH nor in .venv/bin: set PRUNED_UPSTREAM"
    fi
    local bin_dir; bin_dir=$(dirname "$(command -v "${CLI[0]}" || echo "${CLI[0]}")")
    if [[ -z ${PYTHON:-} ]]; then
        if [[ -x $bin_dir/python ]]; then PYTHON=$bin_dir/python; else PYTHON=python3; fi
    fi
}

canonical_task() {
    local t
    for t in "${ALL_TASKS[@]}"; do [[ ${t^^} == "${1^^}" ]] && { echo "$t"; return 0; }; done
    die "unknown task '$1'; known: ${ALL_TASKS[*]}"
}

main() {
    (( $# >= 2 )) || die "usage: $0 UPSTREAM_CKPT OUT_DIR [TASK ...]  (tasks: ${ALL_TASKS[*]})"
    [[ -f $1 || -d $1 ]] || die "upstream checkpoint '$1' does not exist"
    [[ -z ${STEPS_OVERRIDE:-} || $STEPS_OVERRIDE =~ ^[1-9][0-9]*$ ]] || die "STEPS_OVERRIDE='$STEPS_OVERRIDE' is not a positive integer"
    [[ -z ${SUPERB_SEED:-} || $SUPERB_SEED =~ ^[0-9]{1,9}$ ]] || die "SUPERB_SEED='$SUPERB_SEED' is not a seed (0 to 999999999)"
    local fold; for fold in "${ER_FOLDS[@]}"; do [[ $fold =~ ^fold[1-5]$ ]] || die "ER_FOLDS: '$fold' is not fold1 .. fold5"; done
    local here; here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
    # `--`: a path starting with '-' is a path, not an option of realpath
    CKPT=$(realpath -- "$1"); OUT=$(realpath -m -- "$2"); shift 2
    # paths pass between our functions one per line; s3prl_str copies bytes >= 0x80 as they are
    [[ $OUT != *[[:cntrl:]]* ]] || die "OUT_DIR '$OUT' contains a control character (a newline?)"
    CONFIGS=$(realpath -- "$here/../downstream_configs")
    MODEL_NAME=${MODEL_NAME:-$(basename -- "$OUT")}
    find_cli "$here"
    "$PYTHON" -c 'import os, sys; os.fsencode(sys.argv[1]).decode("utf-8")' "$OUT" 2>/dev/null \
        || die "OUT_DIR '$OUT' is not valid UTF-8 text: rename it (its path goes into s3prl's -o as a string)"
    local requested=("$@") tasks=() t
    (( $# > 0 )) || requested=("${ALL_TASKS[@]}")
    for t in "${requested[@]}"; do tasks+=("$(canonical_task "$t")"); done
    [[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$OUT"

    local skipped=() failed=() complete=() missing rc
    for t in "${tasks[@]}"; do
        missing=$(missing_vars "$t")
        if [[ -n $missing ]]; then
            note "skip $t: data not set: $missing (see scripts/README.md)"; skipped+=("$t"); continue
        fi
        if [[ $t == QbE ]]; then
            QBE_LAYER_LIST=${QBE_LAYERS:-}
            QBE_LAYER_LIST=${QBE_LAYER_LIST//,/ }
            if [[ -z $QBE_LAYER_LIST ]]; then
                local n; n=$(count_layers) || { note "QbE: could not count the layers of $CKPT; set QBE_LAYERS"; failed+=(QbE); continue; }
                QBE_LAYER_LIST=$(seq -s ' ' 0 $((n - 1)))
            fi
            [[ $QBE_LAYER_LIST =~ ^[0-9]+( [0-9]+)*$ ]] || die "QBE_LAYERS='${QBE_LAYERS:-}' is not a list of layer numbers (0,1,2)"
        fi
        if task_done "$t"; then note "$t: result present, skipped"; complete+=("$t"); continue; fi
        # SUPERB_PART=score: score what is complete, run nothing; =tasks: run, leave the score to the caller
        # (superb-all --jobs runs units in parallel, then scores once: pruned_upstream/commands/superb_jobs.py)
        if [[ ${SUPERB_PART:-} == score ]]; then note "$t: not complete, not run (SUPERB_PART=score)"; continue; fi
        note "$t: start"
        set +e; ( set -e; run_task "$t" ); rc=$?; set -e
        if (( rc != 0 )); then note "$t: FAILED (exit $rc); rerun to resume"; failed+=("$t")
        elif [[ ${DRY_RUN:-0} == 1 ]] || task_done "$t"; then complete+=("$t")
        fi
    done
    [[ ${SUPERB_PART:-} == tasks ]] || score_all "${complete[@]}"
    note "complete: ${complete[*]:-none}; skipped (data not set): ${skipped[*]:-none}; failed: ${failed[*]:-none}"
    (( ${#failed[@]} == 0 ))
}

# sourced (tests call s3prl_str): define the functions only
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then main "$@"; fi
