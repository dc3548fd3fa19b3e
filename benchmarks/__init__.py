"""Speed benchmarks (not tests): `python -m benchmarks.speed`, and `benchmarks/gpu_huge.py` for a GPU."""
