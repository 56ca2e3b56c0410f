#!/usr/bin/env bash
# Rebuilds every shipped default model in models/ from Debian's KJV text, step by step, with the
# exact commands and seeds of the shipped checkpoints (each one's training.json records its own
# command, seed, thread count and results). CPU only; about 70 minutes on 2 cores (the teacher
# 41 minutes on two threads, then two one-thread lanes of about 20 minutes).
#   tools/train/build_default_models.sh [DATA_DIR] [MODELS_DIR]   (defaults /tmp/kjvdata, models)
# Steps that already have their output are skipped, so an interrupted run resumes.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
data=${1:-/tmp/kjvdata}
out=${2:-models}
py=.venv/bin/python
cache="$data/cache"

step() {  # step OUTPUT_DIR COMMAND…: runs the command unless OUTPUT_DIR/training.json (written
  local dir=$1  # last) exists
  shift
  if [ -f "$dir/training.json" ]; then
    echo "== $dir exists, skipped"
  else
    echo "== $*"
    "$@"
  fi
}

[ -f "$data/test.txt" ] || python3 tools/train/export_kjv.py "$data"
[ -f "$data/tok/tokenizer.model" ] ||
  python3 tools/train/train_tokenizer.py "$data" "$data/tok" --vocab-size 4000

# The teacher: 4 layers, d_model 128, XL memory 128 + compressive memory (conv1d, rate 4, 64 rows).
step "$out/teacher" $py tools/train/train_teacher.py "$data" "$out/teacher" \
  --tokenizer "$data/tok/tokenizer.model" --cache-dir "$cache" --seed 1 --threads 2 \
  --n-layer 4 --d-model 128 --n-head 4 --d-head 32 --d-inner 512 --steps 3000

# Then two lanes, one thread each: the student (teacher layers 0 and 2, distilled with the
# DistilBERT losses) and its pruned variants; the teacher's pruned variants. Each variant is
# movement-pruned with a short fine-tune.
prune() {  # prune MODEL LEVEL
  local how=(--sparsity "0.$2")
  [ "$2" = 2of4 ] && how=(--two-four)
  step "$out/$1-movement-$2" $py tools/train/prune_finetune.py "$data" "$out/$1" \
    "$out/$1-movement-$2" --method movement "${how[@]}" --steps 200 --cache-dir "$cache" \
    --seed 1 --threads 1
}
(
  step "$out/student" $py tools/train/distill_student.py "$data" "$out/teacher" "$out/student" \
    --cache-dir "$cache" --seed 1 --threads 1
  for level in 50 80 90 2of4; do prune student $level; done
) > >(sed 's/^/[student] /') 2>&1 &
student_lane=$!
(
  for level in 50 80 90 2of4; do prune teacher $level; done
) > >(sed 's/^/[teacher] /') 2>&1 &
teacher_lane=$!
wait $student_lane
wait $teacher_lane

# Every model tokenizes as the teacher: the variants link its tokenizer instead of copying it.
for dir in "$out"/*/; do
  [ "$(basename "$dir")" = teacher ] && continue
  cmp -s "$out/teacher/tokenizer.model" "$dir/tokenizer.model" &&
    ln -sf ../teacher/tokenizer.model "$dir/tokenizer.model"
done

# The teacher speculates with the student as its draft.
printf '{"model": "../student", "draft_tokens": 3}\n' > "$out/teacher/draft.json"
echo "== done: $(du -sh "$out" | cut -f1) in $out"
