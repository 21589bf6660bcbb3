"""Run the side-by-side benchmark stand-alone: the same command as `facto-edge bench`.

python tools/bench.py --models resnet18_cifar --batch 32 -o docs/bench/
"""

from facto_edge.bench.cli import bench

if __name__ == "__main__":
    bench()
