"""Runtime tests import their tiny graphs from tiny_graphs.py and the PyTorch reference
from tools/ (tools/torch_ref.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
