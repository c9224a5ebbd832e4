#!/usr/bin/env bash
# The GPU checks, as one script for a borrowed GPU machine (no network there): run from the repository
# root with the wheels genlab needs beyond that machine's own PyTorch image in .whl/ and genlab's
# egg-info (its plugin entry points) beside the code. Writes logs and results to $OUT.
# The wheels, fetched where pip has network (the GPU machine's image has PyTorch, transformers,
# accelerate, onnxruntime; Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types typing-inspection mlxtend torch-fidelity prdc clean-fid nh3
#   1. benchmarks.device_check on CUDA: every bundled model sampled there (same seed twice, against the
#      CPU), genlab's samplers against diffusers' own loops on the GPU, inversion, likelihood, features;
#   2. the bundled report (evals/bundled.toml) drawn on the GPU, timed, its metrics kept for comparison
#      with the committed CPU draw;
#   3. the test suite (less the app's tests, which need Gradio) with CUDA visible, so every model that
#      picks its device by itself picks the GPU, tests/test_on_gpu.py first (skipped where there is no GPU).
# A stage whose *_SECONDS is 0 is skipped.
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 GENLAB_CACHE=/tmp/genlab-cache
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "could not install the carried wheels"; exit 2; }
  export PYTHONPATH=/tmp/site:$PWD:$PWD/plugins
fi
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; \
  nproc; } 2>&1 | tee "$OUT/machine.txt"

if [ "${CHECK_SECONDS:-120}" != 0 ]; then
start=$(date +%s)
timeout "${CHECK_SECONDS:-120}" python3 -m benchmarks.device_check --device cuda --batch 256 --out "$OUT/device_check.json" \
  >"$OUT/device_check.log" 2>&1
echo "device_check rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
grep -E "^(ok|FAIL|all)" "$OUT/device_check.log"
fi

timeout 90 python3 -m pytest -q -p no:cacheprovider -rfEs tests/test_on_gpu.py >"$OUT/pytest_gpu.log" 2>&1
echo "test_on_gpu rc $?" | tee -a "$OUT/summary.txt"
tail -n 5 "$OUT/pytest_gpu.log"

if [ "${EVAL_SECONDS:-180}" != 0 ]; then
start=$(date +%s)
timeout "${EVAL_SECONDS:-180}" python3 -m genlab.cli eval evals/bundled.toml --device cuda --out /tmp/gpu-eval \
  --workers 1 >"$OUT/eval.log" 2>&1
echo "eval rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
cp /tmp/gpu-eval/metrics.json "$OUT/eval_metrics.json" 2>/dev/null
cp /tmp/gpu-eval/report.md "$OUT/eval_report.md" 2>/dev/null
tail -c 3000 "$OUT/eval.log" | tr '\r' '\n' | grep -v "^\s*$" | tail -8
fi

start=$(date +%s)
# pytest-xdist spreads the tests over the machine's cores (-v: each test's name and outcome as it ends)
timeout "${TEST_SECONDS:-150}" python3 -m pytest -v -rfE -p no:cacheprovider -n "${TEST_WORKERS:-12}" --timeout 120 tests \
  --ignore=tests/test_app.py --ignore=tests/test_app_browser.py --ignore=tests/test_app_compare.py \
  --ignore=tests/test_app_inputs.py --ignore=tests/test_spaces.py \
  --deselect tests/test_evals.py::test_standard_inception_features_load_offline_from_the_wheel \
  >"$OUT/pytest.log" 2>&1
echo "pytest rc $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
grep -E "FAILED|ERROR" "$OUT/pytest.log" | tail -n 30; tail -n 3 "$OUT/pytest.log"
