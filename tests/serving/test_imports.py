"""serving/ never imports torch or Lightning (DESIGN §2): a replica loads ONNX and numpy only."""

import subprocess
import sys

CODE = """
import pkgutil, importlib, sys
import recstack.serving as serving
names = [m.name for m in pkgutil.walk_packages(serving.__path__, 'recstack.serving.')]
for name in names:
    importlib.import_module(name)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning'))
assert not heavy, heavy
print(len(names))
"""


def test_every_serving_module_imports_without_torch():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) >= 15  # every module was imported, app.py included
