import sys
from pathlib import Path

# Let benchmarks import their shared workload module and the tests' pure-Python model.
ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent / "tests"))
