"""Resources a run needs before it starts: the model's shape (architecture), what this machine has (machine),
the memory, disk and compute formulas (memory) and the per-stage plan with its refusal (plan).

    python -m rlvr_utils plan params/qwen2.5-1.5b.yaml --gpus 8 --gpu-memory 80
"""
