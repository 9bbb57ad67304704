"""Loop tests run the real service: the serving tests' config helpers are on the path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
