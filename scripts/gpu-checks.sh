#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine with fusion-fast and torch installed: the
# GPU-marked tests (the torch integration and the image path's nvJPEG decoding) and the rest of the torch
# tests with CUDA present, the training example on the GPU, and benches/bench_gpu.py (copy rates, overlap,
# and static_hd images/s through the shipped-bytes path with host CPU time per image). Logs and the
# bench's JSON go to the folder given (default: gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
    --format=csv | tee "$out/nvidia-smi.csv"
python -c 'import platform, torch, fusion_fast; print(platform.python_version(), torch.__version__,
torch.version.cuda, fusion_fast.__version__, fusion_fast.__file__, torch.cuda.get_device_name(0))'
python -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_torch_dataset.py tests/test_vision.py \
    tests/test_vision_device.py 2>&1 | tee "$out/pytest-gpu.log"
status=$((status | PIPESTATUS[0]))
python -m pytest -q -p no:cacheprovider -rs -m "not gpu" tests/test_torch_dataset.py 2>&1 | tail -n 15 \
    | tee "$out/pytest-torch.log"
status=$((status | PIPESTATUS[0]))
python examples/train_minimal.py --workdir "$(mktemp -d)" --steps 20 2>&1 | tail -n 4 | tee "$out/example.log"
status=$((status | PIPESTATUS[0]))
python benches/bench_gpu.py --out "$out/bench_gpu.json" 2>&1 | tee "$out/bench_gpu.md"
status=$((status | PIPESTATUS[0]))
echo "gpu-checks: exit status $status"
exit "$status"
