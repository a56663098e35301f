#!/usr/bin/env bash
# Shell usage of step1x. With the real model downloaded (step1x download ~/step1x-model):
#   export STEP1X_MODEL=~/step1x-model
# Without it, this runs the tiny RANDOM-WEIGHT test model (the output is noise; every stage runs).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${STEP1X_MODEL:-test/golden/tiny_e2e_v11/model}"
SIZE=$([ -n "${STEP1X_MODEL:-}" ] && echo 512 || echo 80)
STEPS=$([ -n "${STEP1X_MODEL:-}" ] && echo 28 || echo 4)

# one edit, JSON summary on stdout
node bin/step1x.js edit examples/input.png "add a red scarf" --model "$MODEL" --size "$SIZE" --steps "$STEPS" -o /tmp/step1x-example.png --json

# pipes: image in on stdin, PNG out on stdout
node bin/step1x.js edit - "make it winter" --model "$MODEL" --size "$SIZE" --steps "$STEPS" --quiet < examples/input.png > /tmp/step1x-piped.png

# the parameters travel with the image
node bin/step1x.js inspect /tmp/step1x-example.png
